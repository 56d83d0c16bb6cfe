"""Reproducible HTTP/1.1 throughput benchmark: mcplb vs HAProxy vs nginx.

Usage (from the repository root)::

    .venv/bin/python bench/http_bench.py [--duration 10] [--connections 50] [--threads 1]
        [--targets direct,mcplb,haproxy,nginx] [--mcplb-workers 1] [--json out.json]
    .venv/bin/python bench/http_bench.py --self-test     # check the wrk-output parser only

In one run it starts two nginx backends (1 worker each, fixed tiny response), then for every
target starts the proxy on a free 127.0.0.1 port, waits until it answers ``GET /`` with 200,
runs a 2 s wrk warm-up and a measured wrk run, stops the proxy, and finally prints a table
(req/s, latency percentiles, errors, ratio to HAProxy and to direct) plus the machine details.

Targets:
  direct   wrk straight at backend 1 (the ceiling)
  mcplb    ``python -m mcplb.proxy.cli run --config FILE`` (round_robin over both backends),
           access log off like the others
  mcplb-log  the same with the access log on (the default), written to a file
  reference  the minimal relay of bench/minimal.py (uvloop + httptools, keep-alive pool)
  haproxy  ``haproxy -f FILE -db``, nbthread 1, keep-alive, http-reuse always
  nginx    proxy nginx, 1 worker, upstream keepalive 64

Exit status: 0 all good; 1 a target failed to start or its wrk run failed (or a required tool is
missing); 2 every target ran but some reported non-2xx/3xx responses or socket errors;
130 interrupted. Every process started here is stopped (SIGTERM, then SIGKILL) and the temp dir
removed, also on Ctrl-C / SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    NotReady,
    free_ports,
    http_status,
    mcplb_python,
    spawn,
    stop_process,
    tail,
    wait_http,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
ALL_TARGETS = ("direct", "mcplb", "mcplb-log", "reference", "haproxy", "nginx")
PROXY_TARGETS = ("mcplb", "mcplb-log", "reference", "haproxy", "nginx")
HOST = "127.0.0.1"
WARMUP_SECONDS = 2
VERSION_TIMEOUT = 10.0
WRK_SLACK = 30.0  # wrk gets duration + this before it is killed


StartError = NotReady  # the name the other benchmarks import


# --------------------------------------------------------------------------- wrk output parser

_TIME_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_METRIC = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5}


def parse_time_ms(text: str) -> float:
    """wrk time ("523.45us", "1.20ms", "2.00s", "1.50m") -> milliseconds."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(us|ms|s|m|h)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m[1]) * _TIME_TO_MS[m[2]]


def parse_metric(text: str) -> float:
    """wrk count ("95.12k", "1.02M", "812") -> number (decimal suffixes)."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([kMGTP]?)", text.strip())
    if m is None:
        raise ValueError(f"not a wrk metric: {text!r}")
    return float(m[1]) * _METRIC[m[2]]


def parse_bytes(text: str) -> float:
    """wrk size ("15.02MB", "512.00B", "1.5KB") -> bytes (binary suffixes)."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGTP]?)B", text.strip())
    if m is None:
        raise ValueError(f"not a wrk size: {text!r}")
    return float(m[1]) * _BINARY[m[2]]


@dataclass
class WrkResult:
    requests_per_sec: float
    transfer_bytes_per_sec: float
    total_requests: int
    total_bytes: float
    elapsed_s: float
    latency_avg_ms: float
    latency_stdev_ms: float
    latency_max_ms: float
    percentiles_ms: dict[str, float]  # "p50", "p75", "p90", "p99"
    socket_errors: dict[str, int]  # connect/read/write/timeout
    non_2xx_3xx: int

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + sum(self.socket_errors.values())


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the stdout of ``wrk --latency``; raise ValueError if a required line is missing."""

    def need(pattern: str) -> re.Match[str]:
        m = re.search(pattern, text, re.MULTILINE)
        if m is None:
            raise ValueError(f"wrk output has no line matching {pattern!r}:\n{text}")
        return m

    lat = need(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)")
    total = need(r"^\s*(\d+) requests in (\S+), (\S+) read")
    rps = need(r"^Requests/sec:\s+([0-9.]+)")
    tps = need(r"^Transfer/sec:\s+(\S+)")
    percentiles = {
        f"p{int(float(m[1]))}": parse_time_ms(m[2])
        for m in re.finditer(r"^\s*([0-9.]+)%\s+(\S+)\s*$", text, re.MULTILINE)
    }
    for p in ("p50", "p90", "p99"):
        if p not in percentiles:
            raise ValueError(f"wrk output has no {p} (was --latency passed?):\n{text}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    if sock is not None:
        socket_errors = dict(zip(socket_errors, map(int, sock.groups()), strict=True))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    return WrkResult(
        requests_per_sec=float(rps[1]),
        transfer_bytes_per_sec=parse_bytes(tps[1]),
        total_requests=int(total[1]),
        total_bytes=parse_bytes(total[3]),
        elapsed_s=parse_time_ms(total[2]) / 1e3,
        latency_avg_ms=parse_time_ms(lat[1]),
        latency_stdev_ms=parse_time_ms(lat[2]),
        latency_max_ms=parse_time_ms(lat[3]),
        percentiles_ms=percentiles,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non2xx[1]) if non2xx else 0,
    )


# --------------------------------------------------------------------------- processes


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float, log: Path) -> None:
    """Bounded wait until port accepts connections and ``GET /`` returns 200."""
    wait_http(proc, port, "/", timeout, log)


def probe_backends(port: int, n: int = 4) -> list[str]:
    """Which backends answered n fresh-connection requests (sanity check of the balancing)."""
    seen: list[str] = []
    for _ in range(n):
        try:
            seen.append(http_status(port)[1].strip())
        except (OSError, http.client.HTTPException) as exc:
            seen.append(f"error: {exc!r}")
    return seen


def run_wrk(
    threads: int,
    connections: int,
    duration: int,
    port: int,
    procs: list[subprocess.Popen[bytes]],
) -> tuple[list[str], int, str]:
    """Run wrk (bounded); returns (command, exit status, output)."""
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency"]
    cmd.append(f"http://{HOST}:{port}/")
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    procs.append(proc)
    try:
        out, _ = proc.communicate(timeout=duration + WRK_SLACK)
    except subprocess.TimeoutExpired:
        stop_process(proc, term_timeout=2.0)
        return cmd, -1, f"wrk did not finish within {duration + WRK_SLACK:.0f}s"
    finally:
        if proc.poll() is not None:
            procs.remove(proc)
    return cmd, proc.returncode, out.decode(errors="replace")


# --------------------------------------------------------------------------- configs

NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def nginx_conf(tmp: Path, name: str, master: bool, http_body: str) -> Path:
    temp_paths = "\n".join(f"    {kind}_temp_path {tmp / name}_{kind};" for kind in NGINX_TEMP_DIRS)
    conf = f"""\
worker_processes 1;
daemon off;
master_process {"on" if master else "off"};
pid {tmp / name}.pid;
error_log {tmp / name}.error.log warn;
events {{
    worker_connections 10240;
}}
http {{
    access_log off;
{temp_paths}
    keepalive_requests 100000;
    keepalive_timeout 65s;
{http_body}
}}
"""
    path = tmp / f"{name}.conf"
    path.write_text(conf)
    return path


def nginx_cmd(tmp: Path, name: str, conf: Path) -> list[str]:
    return ["nginx", "-p", str(tmp), "-e", f"{tmp / name}.error.log", "-c", str(conf)]


def backend_body(n: int, port: int) -> str:
    return f"""\
    server {{
        listen {HOST}:{port};
        default_type text/plain;
        location / {{
            return 200 "hello from backend {n}\\n";
        }}
    }}"""


def proxy_nginx_body(port: int, backend_ports: list[int]) -> str:
    servers = "\n".join(f"        server {HOST}:{p};" for p in backend_ports)
    return f"""\
    upstream backends {{
{servers}
        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen {HOST}:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}"""


def haproxy_conf(tmp: Path, port: int, backend_ports: list[int], connections: int) -> Path:
    servers = "\n".join(f"    server b{i} {HOST}:{p}" for i, p in enumerate(backend_ports, 1))
    conf = f"""\
global
    nbthread 1
    maxconn {max(4096, 2 * connections)}
    pidfile {tmp / "haproxy.pid"}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend fe
    bind {HOST}:{port}
    default_backend be

backend be
    balance roundrobin
{servers}
"""
    path = tmp / "haproxy.cfg"
    path.write_text(conf)
    return path


def mcplb_conf(
    tmp: Path, port: int, backend_ports: list[int], workers: int, access: bool = False
) -> Path:
    lines = [
        f"listen: {HOST}:{port}",
        f"workers: {workers}",
        "strategy: round_robin",
        # Like the HAProxy and nginx configs: no access log (unless asked for: mcplb-log).
        # The admin API (metrics) stays on.
        f"log: {{access: {'true' if access else 'false'}}}",
        f"admin: {{listen: '{HOST}:0'}}",
        # Plain HTTP backends: with several workers, no MCP session store is needed.
        f"sticky: {{mcp_sessions: {'false' if workers > 1 else 'true'}}}",
        "backends:",
    ]
    lines += [
        f'  - {{name: b{i}, url: "http://{HOST}:{p}"}}' for i, p in enumerate(backend_ports, 1)
    ]
    path = tmp / "mcplb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- one target


@dataclass
class TargetResult:
    target: str
    status: str  # "ok" | "failed" | "skipped"
    reason: str = ""
    server_cmd: list[str] = field(default_factory=list)
    wrk_cmd: list[str] = field(default_factory=list)
    backends_seen: list[str] = field(default_factory=list)
    wrk: WrkResult | None = None
    wrk_output: str = ""
    stop: str = ""
    ratio_haproxy: float | None = None
    ratio_direct: float | None = None


def log_step(target: str, msg: str) -> None:
    print(f"[{target}] {msg}", file=sys.stderr, flush=True)


def bench_target(
    target: str,
    port: int,
    backend_ports: list[int],
    args: argparse.Namespace,
    tmp: Path,
    procs: list[subprocess.Popen[bytes]],
) -> TargetResult:
    res = TargetResult(target=target, status="ok")
    proc: subprocess.Popen[bytes] | None = None
    log = tmp / f"{target}.log"
    if target == "direct":
        port = backend_ports[0]
    elif target in ("haproxy", "nginx") and shutil.which(target) is None:
        log_step(target, "skipped: not installed")
        return TargetResult(target=target, status="skipped", reason="not installed")
    elif target == "haproxy":
        res.server_cmd = [
            "haproxy",
            "-f",
            str(haproxy_conf(tmp, port, backend_ports, args.connections)),
            "-db",
        ]
    elif target == "nginx":
        conf = nginx_conf(tmp, "proxy", True, proxy_nginx_body(port, backend_ports))
        res.server_cmd = nginx_cmd(tmp, "proxy", conf)
        log = tmp / "proxy.error.log"
    elif target == "reference":
        relay = str(REPO_ROOT / "bench" / "minimal.py")
        backends = ",".join(map(str, backend_ports))
        res.server_cmd = [mcplb_python(), relay, "relay", str(port), backends]
    elif target in ("mcplb", "mcplb-log"):
        conf = mcplb_conf(tmp, port, backend_ports, args.mcplb_workers, target == "mcplb-log")
        res.server_cmd = [mcplb_python(), "-m", "mcplb.proxy.cli", "run", "--config", str(conf)]
    try:
        if res.server_cmd:
            log_step(target, f"starting: {shlex.join(res.server_cmd)}")
            proc = spawn(res.server_cmd, tmp / f"{target}.log", procs, cwd=REPO_ROOT)
            try:
                wait_ready(proc, port, args.start_timeout, log)
            except StartError as exc:
                res.status, res.reason = "failed", f"failed to start: {exc}"
                log_step(target, res.reason)
                return res
            res.backends_seen = probe_backends(port)
            log_step(target, f"ready on port {port}; probes answered by {res.backends_seen}")
        log_step(target, f"warm-up {WARMUP_SECONDS}s")
        _, rc, out = run_wrk(args.threads, args.connections, WARMUP_SECONDS, port, procs)
        if rc != 0:
            res.status, res.reason, res.wrk_output = "failed", f"warm-up wrk exit {rc}", out
            log_step(target, f"{res.reason}\n{out}")
            return res
        log_step(target, f"measuring {args.duration}s")
        res.wrk_cmd, rc, res.wrk_output = run_wrk(
            args.threads, args.connections, args.duration, port, procs
        )
        if rc != 0:
            res.status, res.reason = "failed", f"wrk exit {rc}"
            log_step(target, f"{res.reason}\n{res.wrk_output}")
            return res
        try:
            res.wrk = parse_wrk_output(res.wrk_output)
        except ValueError as exc:
            res.status, res.reason = "failed", f"unparsable wrk output: {exc}"
            return res
        if proc is not None and proc.poll() is not None:
            res.status = "failed"
            res.reason = f"server exited ({proc.returncode}) during the run\n{tail(log)}"
        elif res.wrk.total_requests == 0:
            res.status, res.reason = "failed", "wrk completed no request"
        log_step(
            target,
            f"{res.wrk.requests_per_sec:,.0f} req/s, p99 {res.wrk.percentiles_ms['p99']:.2f} ms,"
            f" errors {res.wrk.errors}",
        )
        return res
    finally:
        if proc is not None:
            res.stop = stop_process(proc)
            procs.remove(proc)
            if res.stop not in ("terminated", "already exited"):
                log_step(target, f"stop: {res.stop}")


# --------------------------------------------------------------------------- machine / report


def first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return "not installed"
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=VERSION_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    wrk = re.sub(r"\s+Copyright.*", "", first_line(["wrk", "--version"]))
    haproxy = first_line(["haproxy", "-v"]).split(" - ")[0]
    nginx = first_line(["nginx", "-v"]).removeprefix("nginx version: ")
    mcplb_py = first_line(
        [
            mcplb_python(),
            "-c",
            "import importlib.metadata as m, platform;"
            "print(platform.python_version(), 'uvloop', m.version('uvloop'),"
            " 'httptools', m.version('httptools'))",
        ]
    )
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "wrk": wrk,
        "haproxy": haproxy,
        "nginx": nginx,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mcplb_python": mcplb_py,
    }


def add_ratios(results: list[TargetResult]) -> None:
    def rps(name: str) -> float | None:
        for r in results:
            if r.target == name and r.status == "ok" and r.wrk and r.wrk.requests_per_sec > 0:
                return r.wrk.requests_per_sec
        return None

    haproxy, direct = rps("haproxy"), rps("direct")
    for r in results:
        if r.status == "ok" and r.wrk is not None:
            if haproxy:
                r.ratio_haproxy = r.wrk.requests_per_sec / haproxy
            if direct:
                r.ratio_direct = r.wrk.requests_per_sec / direct


def format_table(results: list[TargetResult]) -> str:
    head = (
        "target",
        "req/s",
        "MB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "errors",
        "/haproxy",
        "/direct",
    )
    rows: list[tuple[str, ...]] = [head]
    notes: list[str] = []

    def ratio(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}x"

    for r in results:
        if r.status != "ok" or r.wrk is None:
            lines = r.reason.strip().splitlines() or [""]
            first = lines[0] + (f" | {lines[-1].strip()}" if len(lines) > 1 else "")
            rows.append((r.target, r.status.upper(), "", "", "", "", "", "", ""))
            notes.append(f"  {r.target}: {r.status}: {first}")
            continue
        w = r.wrk
        errs = str(w.errors)
        if w.errors:
            errs += " FAIL"
            detail = ", ".join(f"{k} {v}" for k, v in w.socket_errors.items() if v)
            notes.append(f"  {r.target}: non-2xx/3xx {w.non_2xx_3xx}; socket errors: {detail}")
        rows.append(
            (
                r.target,
                f"{w.requests_per_sec:,.0f}",
                f"{w.transfer_bytes_per_sec / 1e6:.2f}",
                f"{w.percentiles_ms['p50']:.2f}",
                f"{w.percentiles_ms['p90']:.2f}",
                f"{w.percentiles_ms['p99']:.2f}",
                errs,
                ratio(r.ratio_haproxy),
                ratio(r.ratio_direct),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines + notes)


def report(
    command: str, args: argparse.Namespace, machine: dict[str, Any], results: list[TargetResult]
) -> dict[str, Any]:
    print()
    print(f"command: {command}")
    print(
        f"wrk: -t {args.threads} -c {args.connections} -d {args.duration}s --latency"
        f" (after a {WARMUP_SECONDS}s warm-up); mcplb workers: {args.mcplb_workers}"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print()
    print(format_table(results))
    data: dict[str, Any] = {
        "command": command,
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "warmup_s": WARMUP_SECONDS,
            "mcplb_workers": args.mcplb_workers,
            "targets": args.targets,
        },
        "machine": machine,
        "results": [],
    }
    for r in results:
        item = asdict(r)
        if r.wrk is not None:
            item["wrk"]["errors"] = r.wrk.errors
        data["results"].append(item)
    return data


# --------------------------------------------------------------------------- main


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated")
    p.add_argument("--mcplb-workers", type=int, default=1)
    p.add_argument("--start-timeout", type=float, default=15.0, help="seconds to become ready")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep-tmp", action="store_true", help="keep configs and logs")
    p.add_argument("--self-test", action="store_true", help="only check the wrk parser")
    args = p.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = [t for t in args.targets if t not in ALL_TARGETS]
    if unknown or not args.targets:
        p.error(f"unknown targets {unknown}; choose from {','.join(ALL_TARGETS)}")
    if args.duration < 1 or args.connections < 1 or args.threads < 1 or args.mcplb_workers < 1:
        p.error("--duration, --connections, --threads and --mcplb-workers must be >= 1")
    if args.connections < args.threads:
        p.error("wrk needs --connections >= --threads")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.self_test:
        return self_test()
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if missing:
        print(f"error: required tool(s) not on PATH: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    machine = machine_info()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)  # also when started with SIGINT ignored (`cmd &`)
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[TargetResult] = []
    interrupted = False
    try:
        ports = free_ports(2 + len(args.targets))
        backend_ports, target_ports = ports[:2], ports[2:]
        for n, bport in enumerate(backend_ports, 1):
            name = f"backend{n}"
            conf = nginx_conf(tmp, name, False, backend_body(n, bport))
            proc = spawn(nginx_cmd(tmp, name, conf), tmp / f"{name}.log", procs)
            try:
                wait_ready(proc, bport, args.start_timeout, tmp / f"{name}.error.log")
            except StartError as exc:
                print(f"error: backend {n} failed to start: {exc}", file=sys.stderr)
                return 1
        log_step("backends", f"nginx backends ready on ports {backend_ports}")
        for target, port in zip(args.targets, target_ports, strict=True):
            results.append(bench_target(target, port, backend_ports, args, tmp, procs))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the bounded cleanup finish
        for proc in reversed(procs):
            how = stop_process(proc)
            if how not in ("terminated", "already exited"):
                print(f"cleanup: pid {proc.pid} ({proc.args!r}): {how}", file=sys.stderr)
        if args.keep_tmp:
            print(f"kept temp dir {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    add_ratios(results)
    data = report(command, args, machine, results)
    if args.json:
        data["interrupted"] = interrupted
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if any(r.status == "failed" for r in results):
        return 1
    if any(r.wrk is not None and r.wrk.errors for r in results):
        return 2
    return 0


# --------------------------------------------------------------------------- self-test

SAMPLE_OK = """\
Running 10s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   523.45us  123.45us   5.67ms   89.12%
    Req/Sec    95.12k     3.21k  100.23k    78.00%
  Latency Distribution
     50%  498.00us
     75%  560.00us
     90%  650.00us
     99%    1.20ms
  946512 requests in 10.00s, 150.23MB read
Requests/sec:  94651.20
Transfer/sec:     15.02MB
"""

SAMPLE_ERRORS = """\
Running 5s test @ http://127.0.0.1:8081/
  2 threads and 400 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    45.10ms  120.30ms   1.99s    95.20%
    Req/Sec     1.02M   812.00     1.50M    66.00%
  Latency Distribution
     50%   12.00ms
     75%   30.50ms
     90%  210.00ms
     99%    1.50s
  6012 requests in 5.01s, 812.50KB read
  Socket errors: connect 0, read 12, write 3, timeout 41
  Non-2xx or 3xx responses: 17
Requests/sec:   1200.40
Transfer/sec:    162.17KB
"""


def self_test() -> int:
    def close(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9 * max(1.0, abs(b))

    ok = parse_wrk_output(SAMPLE_OK)
    assert close(ok.requests_per_sec, 94651.20)
    assert close(ok.transfer_bytes_per_sec, 15.02 * 1024**2)
    assert ok.total_requests == 946512 and close(ok.elapsed_s, 10.0)
    assert close(ok.total_bytes, 150.23 * 1024**2)
    assert close(ok.latency_avg_ms, 0.52345) and close(ok.latency_max_ms, 5.67)
    assert close(ok.percentiles_ms["p50"], 0.498) and close(ok.percentiles_ms["p90"], 0.65)
    assert close(ok.percentiles_ms["p99"], 1.2) and close(ok.percentiles_ms["p75"], 0.56)
    assert ok.errors == 0 and ok.non_2xx_3xx == 0

    bad = parse_wrk_output(SAMPLE_ERRORS)
    assert close(bad.requests_per_sec, 1200.40)
    assert close(bad.transfer_bytes_per_sec, 162.17 * 1024)
    assert close(bad.latency_max_ms, 1990.0) and close(bad.percentiles_ms["p99"], 1500.0)
    assert bad.socket_errors == {"connect": 0, "read": 12, "write": 3, "timeout": 41}
    assert bad.non_2xx_3xx == 17 and bad.errors == 17 + 12 + 3 + 41

    assert close(parse_metric("95.12k"), 95120.0) and close(parse_metric("1.02M"), 1.02e6)
    assert close(parse_metric("812"), 812.0)
    assert close(parse_time_ms("1.50m"), 90_000.0) and close(parse_time_ms("2.00s"), 2000.0)
    assert close(parse_bytes("512.00B"), 512.0) and close(parse_bytes("1.00GB"), 1024.0**3)
    for bad_text, fn in (("12xs", parse_time_ms), ("1.2Q", parse_metric), ("3MiB", parse_bytes)):
        try:
            fn(bad_text)
        except ValueError:
            pass
        else:
            raise AssertionError(f"{fn.__name__}({bad_text!r}) should fail")
    try:
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")
    except ValueError:
        pass
    else:
        raise AssertionError("garbage wrk output should not parse")
    print("self-test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
