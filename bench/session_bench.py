"""Session-store benchmark: the cost per request of each MCP session store through mcplb.

Usage (from the repository root)::

    .venv/bin/python bench/session_bench.py [--duration 10] [--connections 50] [--threads 1]
        [--stores none,memory,signed,redis] [--rounds 1] [--warmup 2] [--json out.json]
    .venv/bin/python bench/session_bench.py --self-test     # check the Lua-output parser only

It starts one nginx backend (1 worker, named ``b1`` in mcplb's config) that answers every
request with 200, a tiny JSON-RPC result and an ``Mcp-Session-Id`` header: the request's own,
or a fresh ``$request_id`` to a request without one (as MCP servers answer),
and (for the redis store) its own ``redis-server`` (no persistence) on a free 127.0.0.1 port.
Then, for every store, it starts mcplb (``python -m mcplb.proxy.cli run --config FILE``, 1 worker,
round_robin over b1) with that store, waits until it answers ``GET /`` with 200, checks one
MCP-shaped exchange by hand (initialize without a session id, then a ping with the id it got
back must answer 200), runs a warm-up and a measured ``wrk -t1 -c50 -d10s --latency -s
session.lua``, and stops it. With ``--rounds N`` all of that repeats N times, the store
order rotating by one each round (so no store is always first), and the table shows medians.

The table shows per store: req/s, p50/p99 latency (wrk's, corrected for coordinated omission),
non-200 responses, the ratio of req/s to the ``none`` row, the requests sent without / with a
session id, and the CPUs used during the measured run by mcplb and by "other" processes
(the machine's busy time minus this benchmark's processes: with a value well above 0 other
load disturbed the run, which is flagged). mcplb also gets ``admin: {enabled: false}`` and
``log: {access: false}`` when this checkout's config loader knows those keys (checked at
start): the fixed-port admin listener and per-request logging are not what is measured.

mcplb runs from a copy of proxy/, strategies/ and healthcheck/ taken at start (its cwd, which
comes first on sys.path; checked), so every run measures the same code even while the working
tree is being edited; the copy's sha256 is printed.

Stores (the ``sticky`` section of mcplb's config):
  none    mcp_sessions: false (no affinity: the baseline; session ids are passed through)
  memory  store: memory (bindings in the worker)
  signed  store: signed with a random 40-character key (ids rewritten into signed tokens)
  redis   store: redis on the redis-server started here (per-worker cache in front of Redis,
          see proxy/sessions/redis_store.py, so a known session is answered locally)

The wrk Lua script keeps ONE session per wrk thread: until the thread has a session id every
request it sends is ``POST /mcp`` without one (the "initialize"; all connections of the thread
send one at the start, before the first answer arrives, and mcplb binds each of them); the
first 200 answer's ``Mcp-Session-Id`` is captured, and from then on every request of every
connection of that thread is ``POST /mcp`` with ``Mcp-Session-Id: <captured>`` and a ping
body, answered with the same id (so mcplb binds each session once, from the answer to its
initialize). A non-200 answer (404: mcplb did not find the session) is counted by status and
printed, and fails the run.

Exit status: 0 all good; 1 a server failed to start, a wrk run failed or a required tool is
missing; 2 every run completed but some reported non-200 responses, socket errors or no
session; 130 interrupted. Every process started here is stopped (SIGTERM, then SIGKILL) and
the temp dir removed, also on Ctrl-C / SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import re
import resource
import secrets
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    CLOCK_TICKS,
    HOST,
    NotReady,
    WrkResult,
    add_run_options,
    catch_signals,
    drop_tmp,
    first_line,
    free_ports,
    group_cpu_seconds,
    log_step,
    machine_info,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    nginx_cmd,
    nginx_conf,
    one_line,
    package_version,
    parse_wrk_output,
    retire,
    run_wrk,
    spawn,
    stop_all,
    table,
    tail,
    wait_http,
    wait_until,
)
from bench.http_bench import WARMUP_SECONDS  # noqa: E402

ALL_STORES = ("none", "memory", "signed", "redis")
BASELINE = "none"
BACKEND_NAME = "b1"
MCP_PATH = "/mcp"
SESSION_HEADER = "Mcp-Session-Id"
INIT_BODY = (
    '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
    '"capabilities":{},"clientInfo":{"name":"session-bench","version":"1"}}}'
)
PING_BODY = '{"jsonrpc":"2.0","id":2,"method":"ping"}'
BACKEND_BODY = '{"jsonrpc":"2.0","id":1,"result":{}}'
REQUEST_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json, text/event-stream",
}
STATS_PREFIX = "session-stats"
REDIS_TIMEOUT = 2.0  # one raw Redis command (PING, DBSIZE, INFO)
# Settings every mcplb here gets when this checkout's config loader knows them (checked at
# start): per-request logging and a fixed-port admin listener are not what is measured.
EXTRA_SECTIONS = (
    ("admin: {enabled: false}", "admin API off"),
    ("log: {access: false}", "access log off"),
)
OTHER_CPU_WARN = 0.1  # CPUs used by processes outside the benchmark before a run is flagged
# Copied once; every mcplb of the run uses that copy.
SOURCE_DIRS = ("mcplb", "proxy", "strategies", "healthcheck")
KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

# --------------------------------------------------------------------------- wrk Lua script


def _lua_str(text: str) -> str:
    """A Lua string literal (JSON's escapes are a subset of Lua's for these ASCII strings)."""
    return json.dumps(text)


def _lua_headers(extra: str = "") -> str:
    items = ", ".join(f"[{_lua_str(k)}] = {_lua_str(v)}" for k, v in REQUEST_HEADERS.items())
    return "{" + items + extra + "}"


_PING_HEADERS = _lua_headers(f", [{_lua_str(SESSION_HEADER)}] = session")

# request() and response() run in each wrk thread's own Lua state (one per thread, shared by
# all of its connections); done() runs in the main state and collects the per-thread counters
# through setup(thread) + thread:get(name).
SESSION_LUA = f"""\
-- One MCP session per wrk thread: initialize (no session id) until an answer carries
-- Mcp-Session-Id, then every request of the thread pings with that id.
local threads = {{}}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   session = nil
   inits, pings, non200, no_id = 0, 0, 0, 0
   statuses = {{}}
   first_bad = ""
   init_req = wrk.format("POST", {_lua_str(MCP_PATH)}, {_lua_headers()}, {_lua_str(INIT_BODY)})
   ping_req = nil
end

function request()
   if session == nil then
      inits = inits + 1
      return init_req
   end
   pings = pings + 1
   return ping_req
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
      if first_bad == "" then
         first_bad = string.gsub(string.sub(body or "", 1, 200), "%s+", " ")
      end
      return
   end
   if session == nil then
      for name, value in pairs(headers) do
         if string.lower(name) == "mcp-session-id" then
            session = value
            break
         end
      end
      if session == nil then
         no_id = no_id + 1
      else
         ping_req = wrk.format("POST", {_lua_str(MCP_PATH)}, {_PING_HEADERS}, {_lua_str(PING_BODY)})
      end
   end
end

function done(summary, latency, requests)
   local total = {{inits = 0, pings = 0, non200 = 0, no_id = 0, threads = 0, sessions = 0}}
   local codes = {{}}
   local sample, bad = "", ""
   for _, thread in ipairs(threads) do
      total.threads = total.threads + 1
      for _, key in ipairs({{"inits", "pings", "non200", "no_id"}}) do
         total[key] = total[key] + (thread:get(key) or 0)
      end
      local s = thread:get("session")
      if s then
         total.sessions = total.sessions + 1
         if sample == "" then sample = s end
      end
      local st = thread:get("statuses")
      if st then
         for k, v in pairs(st) do codes[k] = (codes[k] or 0) + v end
      end
      local fb = thread:get("first_bad")
      if bad == "" and fb then bad = fb end
   end
   for k, v in pairs(total) do
      io.write(string.format("{STATS_PREFIX}\\t%s\\t%d\\n", k, v))
   end
   for k, v in pairs(codes) do
      io.write(string.format("{STATS_PREFIX}\\tstatus_%s\\t%d\\n", k, v))
   end
   io.write(string.format("{STATS_PREFIX}\\tsample\\t%s\\n", sample))
   io.write(string.format("{STATS_PREFIX}\\tfirst_bad\\t%s\\n", bad))
   io.write("{STATS_PREFIX}-end\\n")
end
"""


@dataclass
class SessionStats:
    """What SESSION_LUA's done() reports, summed over the wrk threads."""

    threads: int = 0
    sessions: int = 0  # threads that captured a session id
    inits: int = 0  # requests sent without a session id
    pings: int = 0  # requests sent with the captured id
    non200: int = 0
    no_id: int = 0  # 200 answers to a thread without a session that carried no id
    statuses: dict[str, int] = field(default_factory=dict)  # non-200 status -> count
    sample: str = ""  # one captured session id, as the client saw it
    first_bad: str = ""  # start of the first non-200 body


def parse_stats(text: str) -> SessionStats:
    """The ``session-stats<TAB>key<TAB>value`` lines printed by SESSION_LUA's done()."""
    if f"{STATS_PREFIX}-end" not in text:
        raise ValueError(f"wrk output has no {STATS_PREFIX}-end line (Lua done() did not run)")
    stats = SessionStats()
    counters = ("threads", "sessions", "inits", "pings", "non200", "no_id")
    for m in re.finditer(rf"^{STATS_PREFIX}\t(\w+)\t(.*)$", text, re.MULTILINE):
        key, value = m[1], m[2].rstrip("\r")
        if key in counters:
            setattr(stats, key, int(value))
        elif key.startswith("status_"):
            stats.statuses[key.removeprefix("status_")] = int(value)
        elif key in ("sample", "first_bad"):
            setattr(stats, key, value)
    return stats


# --------------------------------------------------------------------------- servers


def backend_body(port: int) -> str:
    # As MCP servers do (both SDKs): the session id of the request on every answer, and a
    # new one only to a request without one (the "initialize"). An answer with another id
    # than the request's would be a new session for mcplb to bind, on every request.
    return f"""\
    map $http_mcp_session_id $mcp_session {{
        "" $request_id;
        default $http_mcp_session_id;
    }}
    server {{
        listen {HOST}:{port};
        default_type application/json;
        location / {{
            add_header {SESSION_HEADER} $mcp_session always;
            return 200 '{BACKEND_BODY}';
        }}
    }}"""


def redis_command(port: int, *words: str, timeout: float = REDIS_TIMEOUT) -> bytes:
    """Send one RESP command and return the raw reply (bounded; enough for PING/DBSIZE/INFO)."""
    payload = f"*{len(words)}\r\n".encode() + b"".join(
        f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words
    )
    deadline = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
            if _resp_complete(reply):
                return reply
    raise OSError(f"incomplete Redis reply to {words[0]}: {reply[:100]!r}")


def _resp_complete(reply: bytes) -> bool:
    if reply[:1] in (b"+", b"-", b":"):
        return reply.endswith(b"\r\n")
    if reply[:1] == b"$":
        head, sep, rest = reply.partition(b"\r\n")
        return bool(sep) and (int(head[1:]) < 0 or len(rest) >= int(head[1:]) + 2)
    return False


def redis_int(port: int, *words: str) -> int:
    reply = redis_command(port, *words)
    if not reply.startswith(b":"):
        raise OSError(f"unexpected Redis reply to {words[0]}: {reply[:100]!r}")
    return int(reply[1:].strip())


def redis_info_field(port: int, section: str, name: str) -> int:
    reply = redis_command(port, "INFO", section).decode(errors="replace")
    m = re.search(rf"^{name}:(\d+)", reply, re.MULTILINE)
    if m is None:
        raise OSError(f"Redis INFO {section} has no {name}")
    return int(m[1])


def wait_redis(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    """Bounded wait until redis-server answers PING with +PONG."""

    def probe() -> str | None:
        try:
            reply = redis_command(port, "PING", timeout=1.0)
        except OSError as exc:
            return f"PING failed: {exc}"
        return None if reply.startswith(b"+PONG") else f"PING answered {reply[:100]!r}"

    wait_until(proc, probe, timeout, log)


def sticky_flow(store: str, redis_port: int | None, key: str = "<40 random chars>") -> str:
    """The ``sticky`` section of mcplb's config for one store, as a YAML flow mapping."""
    if store == "none":
        return "{mcp_sessions: false}"
    if store == "signed":
        return f'{{store: signed, keys: ["{key}"]}}'
    if store == "redis":
        return f'{{store: redis, redis: {{url: "redis://{HOST}:{redis_port}/0"}}}}'
    return f"{{store: {store}}}"


def mcplb_text(port: int, backend_port: int, after: list[str]) -> str:
    head = ["workers: 1", "strategy: round_robin"]
    return mcplb_config(port, head, {BACKEND_NAME: backend_port}, after)


def supported_extras() -> list[tuple[str, str]]:
    """Which of EXTRA_SECTIONS this checkout's config loader accepts: (yaml line, label)."""
    from mcplb.proxy.config.errors import ConfigError
    from mcplb.proxy.config.loader import parse_config

    ok: list[tuple[str, str]] = []
    for line, label in EXTRA_SECTIONS:
        text = mcplb_text(1, 2, [line])
        try:
            parse_config(text, "session-bench-probe", {})
        except ConfigError:
            continue
        ok.append((line, label))
    return ok


def mcplb_conf(path: Path, port: int, backend_port: int, sticky: str, extras: list[str]) -> Path:
    path.write_text(mcplb_text(port, backend_port, [f"sticky: {sticky}", *extras]))
    path.chmod(0o600)  # may hold the signing key
    return path


def mcp_post(port: int, body: str, session: str | None) -> tuple[int, str | None, str]:
    """One ``POST /mcp`` on a fresh connection: (status, Mcp-Session-Id answered, body)."""
    headers = dict(REQUEST_HEADERS, Connection="close")
    if session is not None:
        headers[SESSION_HEADER] = session
    conn = http.client.HTTPConnection(HOST, port, timeout=2.0)
    try:
        conn.request("POST", MCP_PATH, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader(SESSION_HEADER), resp.read(4096).decode(errors="replace")
    finally:
        conn.close()


def probe_session(port: int) -> tuple[bool, str]:
    """initialize, then ping with the id it answered: (ok, what happened)."""
    try:
        status, sid, body = mcp_post(port, INIT_BODY, None)
        if status != 200 or not sid:
            return False, f"initialize answered {status}, session id {sid!r}: {body[:200]}"
        status2, _, body2 = mcp_post(port, PING_BODY, sid)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"probe failed: {exc!r}"
    shown = sid if len(sid) <= 48 else f"{sid[:45]}..."
    if status2 != 200:
        return False, f"initialize gave id {shown!r}, ping with it answered {status2}: {body2}"
    return True, f"initialize gave id {shown!r} ({len(sid)} chars); ping with it answered 200"


# --------------------------------------------------------------------------- CPU accounting


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat; 0.0 if unavailable)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    # cpu user nice system idle iowait irq softirq steal ...: all but idle and iowait
    ticks = [int(x) for x in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Splits the machine's busy CPU time over a window into named process groups (each
    started with start_new_session, so pgid == pid), wrk (reaped by us inside the window:
    RUSAGE_CHILDREN) and "other"; stop() answers in CPUs (seconds busy per second)."""

    def __init__(self, groups: dict[str, set[int]]) -> None:
        self.groups = groups
        self.start = time.monotonic()
        self.machine = machine_busy_seconds()
        self.children = children_cpu_seconds()
        self.by_group = {name: group_cpu_seconds(pids) for name, pids in groups.items()}

    def stop(self) -> dict[str, float]:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        out = {
            name: (group_cpu_seconds(pids) - self.by_group[name]) / elapsed
            for name, pids in self.groups.items()
        }
        out["wrk"] = (children_cpu_seconds() - self.children) / elapsed
        machine = (machine_busy_seconds() - self.machine) / elapsed
        out["other"] = max(0.0, machine - sum(out.values()))
        return {name: round(value, 2) for name, value in out.items()}


# --------------------------------------------------------------------------- one run


@dataclass
class StoreRun:
    """One measured wrk run of one store (a fresh mcplb process)."""

    store: str
    round: int
    status: str  # "ok" | "failed"
    reason: str = ""
    server_cmd: list[str] = field(default_factory=list)
    wrk_cmd: list[str] = field(default_factory=list)
    probe: str = ""
    wrk: WrkResult | None = None
    stats: SessionStats | None = None
    wrk_output: str = ""
    redis_keys_after: int | None = None
    redis_commands_during_run: int | None = None
    # CPUs busy during the measured run: mcplb, servers (nginx backend + redis), wrk, other
    # (everything else on the machine: anything well above 0 means the numbers are disturbed)
    cpu: dict[str, float] = field(default_factory=dict)
    stop: str = ""

    @property
    def problems(self) -> list[str]:
        """Why a completed run does not count as clean (non-200s, socket errors, no session)."""
        out: list[str] = []
        if self.wrk is not None and any(self.wrk.socket_errors.values()):
            out.append(f"socket errors: {self.wrk.socket_error_text()}")
        s = self.stats
        if s is not None:
            if s.non200:
                codes = ", ".join(f"{k}: {v}" for k, v in sorted(s.statuses.items()))
                out.append(
                    f"non-200 responses {s.non200} ({codes}); first body: {s.first_bad[:160]!r}"
                )
            if s.sessions < s.threads:
                out.append(
                    f"only {s.sessions} of {s.threads} wrk threads got a session id"
                    f" ({s.no_id} 200 answers without one)"
                )
            elif s.pings == 0:
                out.append("no request carried a session id")
        return out


@dataclass
class Setup:
    """What every run shares."""

    args: argparse.Namespace
    tmp: Path
    lua: Path
    backend_port: int
    redis_port: int | None
    signing_key: str
    src: Path  # the snapshot of SOURCE_DIRS mcplb runs from (its cwd)
    extras: list[str]
    procs: list[subprocess.Popen[bytes]]
    watched: dict[str, subprocess.Popen[bytes]]  # processes that must stay up


def bench_run(store: str, rnd: int, port: int, setup: Setup) -> StoreRun:
    args, procs = setup.args, setup.procs
    res = StoreRun(store=store, round=rnd, status="ok")
    tag = f"{store} #{rnd}"
    sticky = sticky_flow(store, setup.redis_port, setup.signing_key)
    conf = mcplb_conf(
        setup.tmp / f"mcplb-{store}-{rnd}.yaml", port, setup.backend_port, sticky, setup.extras
    )
    res.server_cmd = mcplb_cmd(conf)
    log = setup.tmp / f"mcplb-{store}-{rnd}.log"
    log_step(tag, f"starting: {shlex.join(res.server_cmd)}")
    proc = spawn(res.server_cmd, log, procs, cwd=setup.src)
    try:
        try:
            wait_http(proc, port, "/", args.start_timeout, log)
        except NotReady as exc:
            res.status, res.reason = "failed", f"failed to start: {exc}"
            log_step(tag, res.reason)
            return res
        ok, res.probe = probe_session(port)
        log_step(tag, f"ready on port {port}; {res.probe}")
        if not ok:
            res.status, res.reason = "failed", f"session probe: {res.probe}"
            return res
        if args.warmup > 0:
            log_step(tag, f"warm-up {args.warmup}s")
            _, rc, out = run_wrk(
                args.threads, args.connections, args.warmup, port, procs, setup.lua
            )
            if rc != 0:
                res.status, res.reason, res.wrk_output = "failed", f"warm-up wrk exit {rc}", out
                log_step(tag, f"{res.reason}\n{out}")
                return res
        redis_port = setup.redis_port if store == "redis" else None
        before = None
        if redis_port is not None:
            before = redis_info_field(redis_port, "stats", "total_commands_processed")
        log_step(tag, f"measuring {args.duration}s")
        groups = {"mcplb": {proc.pid}, "servers": {p.pid for p in setup.watched.values()}}
        meter = CpuMeter(groups)
        res.wrk_cmd, rc, res.wrk_output = run_wrk(
            args.threads, args.connections, args.duration, port, procs, setup.lua
        )
        res.cpu = meter.stop()
        if rc != 0:
            res.status, res.reason = "failed", f"wrk exit {rc}"
            log_step(tag, f"{res.reason}\n{res.wrk_output}")
            return res
        if redis_port is not None and before is not None:
            after = redis_info_field(redis_port, "stats", "total_commands_processed")
            res.redis_commands_during_run = after - before - 1  # minus the first INFO
            res.redis_keys_after = redis_int(redis_port, "DBSIZE")
        try:
            res.wrk = parse_wrk_output(res.wrk_output)
            res.stats = parse_stats(res.wrk_output)
        except ValueError as exc:
            res.status, res.reason = "failed", f"unparsable wrk output: {exc}"
            return res
        dead = [name for name, p in setup.watched.items() if p.poll() is not None]
        if proc.poll() is not None:
            res.status = "failed"
            res.reason = f"mcplb exited ({proc.returncode}) during the run\n{tail(log)}"
        elif dead:
            res.status, res.reason = "failed", f"{', '.join(dead)} exited during the run"
        elif res.wrk.total_requests == 0:
            res.status, res.reason = "failed", "wrk completed no request"
        s = res.stats
        log_step(
            tag,
            f"{res.wrk.requests_per_sec:,.0f} req/s, p99 {res.wrk.percentiles_ms['p99']:.2f} ms,"
            f" non-200 {s.non200}; {s.inits} without a session id, {s.pings} with one,"
            f" {s.sessions}/{s.threads} wrk threads got a session; CPUs used: {res.cpu}",
        )
        for problem in res.problems:
            log_step(tag, f"FAIL: {problem}")
        return res
    except OSError as exc:  # a raw Redis command failed
        res.status, res.reason = "failed", f"Redis: {exc}"
        return res
    finally:
        res.stop = retire(proc, procs, tag)


# --------------------------------------------------------------------------- report


@dataclass
class StoreSummary:
    """One store over all rounds: medians of the successful runs."""

    store: str
    sticky: str
    runs_ok: int = 0
    runs_failed: int = 0
    requests_per_sec: float | None = None  # median
    p50_ms: float | None = None  # median
    p99_ms: float | None = None  # median
    non200: int = 0  # summed over the runs
    socket_errors: int = 0
    requests_without_id: int = 0
    requests_with_id: int = 0
    rps_per_round: list[float | None] = field(default_factory=list)
    mcplb_cpu: float | None = None  # median, in CPUs
    other_cpu: float | None = None  # median, in CPUs: load from outside this benchmark
    ratio_none: float | None = None


def summarize(
    runs: list[StoreRun], stores: list[str], rounds: int, redis_port: int | None
) -> list[StoreSummary]:
    out: list[StoreSummary] = []
    for store in stores:
        summary = StoreSummary(store=store, sticky=sticky_flow(store, redis_port))
        by_round: dict[int, float] = {}
        rps: list[float] = []
        p50: list[float] = []
        p99: list[float] = []
        mcplb_cpu: list[float] = []
        other_cpu: list[float] = []
        for r in runs:
            if r.store != store:
                continue
            if r.status != "ok" or r.wrk is None or r.stats is None:
                summary.runs_failed += 1
                continue
            summary.runs_ok += 1
            rps.append(r.wrk.requests_per_sec)
            by_round[r.round] = r.wrk.requests_per_sec
            p50.append(r.wrk.percentiles_ms["p50"])
            p99.append(r.wrk.percentiles_ms["p99"])
            if r.cpu:
                mcplb_cpu.append(r.cpu["mcplb"])
                other_cpu.append(r.cpu["other"])
            summary.non200 += r.stats.non200
            summary.socket_errors += sum(r.wrk.socket_errors.values())
            summary.requests_without_id += r.stats.inits
            summary.requests_with_id += r.stats.pings
        if rps:
            summary.requests_per_sec = statistics.median(rps)
            summary.p50_ms = statistics.median(p50)
            summary.p99_ms = statistics.median(p99)
        if mcplb_cpu:
            summary.mcplb_cpu = statistics.median(mcplb_cpu)
            summary.other_cpu = statistics.median(other_cpu)
        summary.rps_per_round = [by_round.get(n) for n in range(1, rounds + 1)]
        out.append(summary)
    base = next((s.requests_per_sec for s in out if s.store == BASELINE), None)
    for s in out:
        if base and s.requests_per_sec is not None:
            s.ratio_none = s.requests_per_sec / base
    return out


def format_table(summaries: list[StoreSummary], runs: list[StoreRun], rounds: int) -> str:
    head: tuple[str, ...] = (
        "store",
        "req/s",
        "p50 ms",
        "p99 ms",
        "non-200",
        "/none",
        "no-id req",
        "id req",
        "mcplb cpu",
        "other cpu",
    )
    if rounds > 1:
        head += tuple(f"r{n} req/s" for n in range(1, rounds + 1))
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []

    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    for s in summaries:
        if s.runs_ok == 0:
            label = "FAILED" if s.runs_failed else "not run"
            rows.append((s.store, label, *([""] * (len(head) - 2))))
            continue
        non200 = str(s.non200) + (" FAIL" if s.non200 else "")
        row: tuple[str, ...] = (
            s.store,
            num(s.requests_per_sec, ",.0f"),
            num(s.p50_ms, ".2f"),
            num(s.p99_ms, ".2f"),
            non200,
            "n/a" if s.ratio_none is None else f"{s.ratio_none:.3f}x",
            str(s.requests_without_id),
            str(s.requests_with_id),
            num(s.mcplb_cpu, ".2f"),
            num(s.other_cpu, ".2f"),
        )
        if rounds > 1:
            row += tuple(num(x, ",.0f") for x in s.rps_per_round)
        rows.append(row)
    for r in runs:
        tag = f"{r.store} #{r.round}"
        if r.status != "ok":
            notes.append(f"  {tag}: {r.status}: {one_line(r.reason)}")
        notes += [f"  {tag}: FAIL: {p}" for p in r.problems]
        if r.cpu.get("other", 0.0) > OTHER_CPU_WARN:
            notes.append(
                f"  {tag}: WARNING: other processes used {r.cpu['other']:.2f} CPUs during the"
                " run: its numbers are disturbed"
            )
        if r.redis_commands_during_run is not None:
            notes.append(
                f"  {tag}: Redis processed {r.redis_commands_during_run} commands during the"
                f" measured run; {r.redis_keys_after} keys after it"
            )
    return "\n".join([table(head, rows), *notes])


def bench_machine_info() -> dict[str, Any]:
    info = machine_info(("wrk", "nginx"))
    info["redis"] = first_line(["redis-server", "--version"]).split(" sha=")[0]
    info["redis_py"] = package_version("redis")
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (-c)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (-t); one session each")
    p.add_argument("--stores", default=",".join(ALL_STORES), help="comma-separated")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat every store; order rotates, medians shown"
    )
    p.add_argument("--warmup", type=int, default=WARMUP_SECONDS, help="seconds (0: none)")
    add_run_options(p)
    p.add_argument("--self-test", action="store_true", help="only check the Lua-output parser")
    args = p.parse_args(argv)
    args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = [s for s in args.stores if s not in ALL_STORES]
    if unknown or not args.stores or len(set(args.stores)) != len(args.stores):
        p.error(f"--stores: each of {','.join(ALL_STORES)} at most once (got {args.stores})")
    if min(args.duration, args.connections, args.threads, args.rounds) < 1:
        p.error("--duration, --connections, --threads and --rounds must be >= 1")
    if args.connections < args.threads:
        p.error("wrk needs --connections >= --threads")
    if args.warmup < 0 or args.start_timeout <= 0:
        p.error("--warmup must be >= 0, --start-timeout > 0")
    return args


def snapshot_source(dest: Path, timeout: float) -> str:
    """Copy SOURCE_DIRS into dest, check that mcplb's python imports them from there (it runs
    with dest as its cwd, which comes first on sys.path), and return a fingerprint. So every
    run uses the same code even while the working tree is being edited."""
    dest.mkdir()
    for name in SOURCE_DIRS:
        if (REPO_ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore, symlinks=True)
    digest = hashlib.sha256()
    for path in sorted(p for p in dest.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(dest)).encode() + b"\0" + path.read_bytes() + b"\0")
    check = [mcplb_python(), "-c", "import mcplb.proxy.cli as c; print(c.__file__)"]
    try:
        out = subprocess.run(
            check, cwd=dest, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NotReady(f"cannot import the source snapshot: {exc}") from exc
    where = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or not where.is_relative_to(dest.resolve()):
        detail = (out.stderr.strip().splitlines() or [str(where)])[-1]
        raise NotReady(f"mcplb's python does not import the source snapshot in {dest}: {detail}")
    return digest.hexdigest()[:16]


def start_servers(setup: Setup, redis_cmd: list[str]) -> None:
    """The nginx backend and (if redis_cmd) redis-server; raises NotReady."""
    args, tmp = setup.args, setup.tmp
    conf = nginx_conf(tmp, "backend", False, backend_body(setup.backend_port))
    backend = spawn(nginx_cmd(tmp, "backend", conf), tmp / "backend.log", setup.procs)
    setup.watched["nginx backend"] = backend
    wait_http(backend, setup.backend_port, "/", args.start_timeout, tmp / "backend.error.log")
    log_step("backend", f"nginx backend {BACKEND_NAME} ready on port {setup.backend_port}")
    if redis_cmd:
        assert setup.redis_port is not None
        (tmp / "redis").mkdir()
        redis_log = tmp / "redis.log"
        setup.watched["redis-server"] = spawn(redis_cmd, redis_log, setup.procs)
        wait_redis(setup.watched["redis-server"], setup.redis_port, args.start_timeout, redis_log)
        log_step("redis", f"ready: {shlex.join(redis_cmd)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    tools = ["wrk", "nginx"] + (["redis-server"] if "redis" in args.stores else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(f"error: required tool(s) not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    machine = bench_machine_info()
    extras: list[tuple[str, str]] = []
    fingerprint = ""
    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-session-"))
    n_runs = len(args.stores) * args.rounds
    backend_port, redis_port, *proxy_ports = free_ports(2 + n_runs)
    redis_cmd: list[str] = []
    if "redis" in args.stores:
        redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
        redis_cmd += ["--appendonly", "no", "--dir", str(tmp / "redis")]
    setup = Setup(
        args=args,
        tmp=tmp,
        lua=tmp / "session.lua",
        backend_port=backend_port,
        redis_port=redis_port if redis_cmd else None,
        signing_key="".join(secrets.choice(KEY_CHARS) for _ in range(40)),
        src=tmp / "src",
        extras=[],
        procs=[],
        watched={},
    )
    runs: list[StoreRun] = []
    interrupted = failed_setup = False
    try:
        setup.lua.write_text(SESSION_LUA)
        fingerprint = snapshot_source(setup.src, args.start_timeout)
        sys.path.insert(0, str(setup.src))  # check the config keys against the snapshot too
        extras = supported_extras()
        setup.extras = [line for line, _ in extras]
        log_step("source", f"mcplb runs from a copy of {', '.join(SOURCE_DIRS)} ({fingerprint})")
        start_servers(setup, redis_cmd)
        ports = iter(proxy_ports)
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(args.stores)
            for store in args.stores[shift:] + args.stores[:shift]:
                runs.append(bench_run(store, rnd, next(ports), setup))
    except NotReady as exc:
        print(f"error: setup failed: {exc}", file=sys.stderr)
        failed_setup = True
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(setup.procs)
        drop_tmp(tmp, args.keep_tmp)

    summaries = summarize(runs, args.stores, args.rounds, setup.redis_port)
    wrk_cmd = next((r.wrk_cmd for r in runs if r.wrk_cmd), [])
    extra_text = ", ".join(label for _, label in extras) or "none accepted by this checkout"
    print()
    print(f"command: {command}")
    print(
        f"backend: nginx, 1 worker, every answer 200 + {SESSION_HEADER}: the request's, or"
        " a new $request_id"
        f" (name {BACKEND_NAME})"
    )
    if redis_cmd:
        print(f"redis: {shlex.join(redis_cmd)}")
    print(
        f"mcplb: {mcplb_python()} -m mcplb.proxy.cli run --config FILE  (workers 1, round_robin,"
        f" one backend; extra settings: {extra_text})"
    )
    print(
        f"mcplb source: a copy of {'/, '.join(SOURCE_DIRS)}/ taken at start (sha256"
        f" {fingerprint or 'n/a'}), run as the cwd, so all runs use the same code"
    )
    for s in summaries:
        print(f"  {s.store}: sticky: {s.sticky}")
    print(
        f"wrk: {shlex.join(wrk_cmd) if wrk_cmd else '(not run)'}  (after a {args.warmup}s"
        " warm-up with the same script against the same mcplb process)"
    )
    print(
        f"sessions: one per wrk thread ({args.threads} thread(s), {args.connections}"
        " connections): all connections of a thread share the session id it captured first;"
        " 'no-id req' are the initialize requests sent before it had one"
    )
    if args.rounds > 1:
        print(
            f"rounds: {args.rounds}, the store order rotating each round; req/s, p50 and p99"
            " are medians over the rounds, /none the ratio of the req/s medians"
        )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print(
        "note: wrk, the nginx backend, mcplb and redis-server all share these CPUs; runs on a"
        " small VM vary by several percent, so compare ratios from --rounds 3 or more"
    )
    print()
    print(format_table(summaries, runs, args.rounds))
    if args.json:
        data: dict[str, Any] = {
            "command": command,
            "settings": {
                "duration_s": args.duration,
                "connections": args.connections,
                "threads": args.threads,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "stores": args.stores,
                "redis_cmd": redis_cmd,
                "mcplb_extra_settings": [line for line, _ in extras],
                "mcplb_source_sha256_16": fingerprint,
                "sessions": "one per wrk thread, shared by its connections",
            },
            "machine": machine,
            "summary": [asdict(s) for s in summaries],
            "runs": [],
            "interrupted": interrupted,
        }
        for r in runs:
            item = asdict(r)
            item["problems"] = r.problems
            if r.wrk is not None:
                item["wrk"]["errors"] = r.wrk.errors
            data["runs"].append(item)
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if failed_setup or any(r.status == "failed" for r in runs):
        return 1
    if any(r.problems for r in runs):
        return 2
    return 0


# --------------------------------------------------------------------------- self-test

SAMPLE_STATS = f"""\
  Latency Distribution
     50%  498.00us
{STATS_PREFIX}\tinits\t50
{STATS_PREFIX}\tpings\t120345
{STATS_PREFIX}\tnon200\t3
{STATS_PREFIX}\tno_id\t0
{STATS_PREFIX}\tthreads\t1
{STATS_PREFIX}\tsessions\t1
{STATS_PREFIX}\tstatus_404\t2
{STATS_PREFIX}\tstatus_502\t1
{STATS_PREFIX}\tsample\tv1.abc-DEF_123
{STATS_PREFIX}\tfirst_bad\t{{"error":{{"message":"Session not found"}}}}
{STATS_PREFIX}-end
Requests/sec:  12345.67
"""


def self_test() -> int:
    s = parse_stats(SAMPLE_STATS)
    assert (s.inits, s.pings, s.non200, s.no_id, s.threads, s.sessions) == (50, 120345, 3, 0, 1, 1)
    assert s.statuses == {"404": 2, "502": 1}, s.statuses
    assert s.sample == "v1.abc-DEF_123" and "Session not found" in s.first_bad
    empty = parse_stats(f"{STATS_PREFIX}\tsample\t\n{STATS_PREFIX}-end\n")
    assert empty.sample == "" and empty.statuses == {} and empty.pings == 0
    try:
        parse_stats("Requests/sec: 1.0\n")
    except ValueError:
        pass
    else:
        raise AssertionError("output without the end marker should not parse")
    res = StoreRun(store="memory", round=1, status="ok", stats=s)
    assert any("404: 2" in p for p in res.problems)
    assert "Mcp-Session-Id" in SESSION_LUA and '"Accept"' in SESSION_LUA
    print("self-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
