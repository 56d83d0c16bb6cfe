"""Reproducible HTTP/1.1 throughput benchmark: mcplb vs HAProxy vs nginx.

Usage (from the repository root)::

    .venv/bin/python bench/http_bench.py [--duration 10] [--connections 50] [--threads 1]
        [--targets direct,mcplb,haproxy,nginx] [--mcplb-workers 1] [--json out.json]
    .venv/bin/python bench/http_bench.py --self-test     # check the wrk-output parser only
    PYTHONPATH=build/compiled .venv/bin/python bench/http_bench.py ...   # the compiled build

Each mcplb target's line "measured: ..." is the version line that process logged: pure
Python, or the compiled modules (``bench.common.measured_build``; a pure process where the
compiled build was asked for fails the target rather than be reported as compiled).

In one run it starts two nginx backends (1 worker each, fixed tiny response), then for every
target starts the proxy on a free 127.0.0.1 port, waits until it answers ``GET /`` with 200,
runs a 2 s wrk warm-up and a measured wrk run, stops the proxy, and finally prints a table
(req/s, latency percentiles, errors, ratio to HAProxy and to direct) plus the machine details.
Each proxy gets one core: it is pinned to the last CPU, and the backends, wrk and this
script to the others (``common.pin_proxies``; ``direct`` runs wrk and the backend on those).
It also reads each proxy's CPU time (its process group's, from /proc) over the measured run:
CPU time per request, steadier than req/s from run to run, and as a ratio to HAProxy's; and
the share of one core it used (a proxy well under 100% was not what limited its req/s: the
load generator and the backends share the machine).

Targets:
  direct   wrk straight at backend 1 (wrk and the backend share the cores left to them)
  mcplb    ``python -P -m mcplb.proxy.cli run --config FILE`` (round_robin over both backends),
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
import http.client
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    HOST,
    NotReady,
    WrkResult,
    WrongBuild,
    add_run_options,
    build_label,
    catch_signals,
    drop_tmp,
    free_ports,
    group_cpu_seconds,
    group_pids,
    haproxy_conf,
    http_status,
    log_step,
    machine_info,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    measured_build,
    nginx_backend,
    nginx_cmd,
    nginx_conf,
    one_line,
    parse_bytes,
    parse_metric,
    parse_time_ms,
    parse_wrk_output,
    pin_proxies,
    retire,
    run_wrk,
    spawn,
    stop_all,
    table,
    tail,
    wait_http,
)

ALL_TARGETS = ("direct", "mcplb", "mcplb-log", "reference", "haproxy", "nginx")
PROXY_TARGETS = ("mcplb", "mcplb-log", "reference", "haproxy", "nginx")
WARMUP_SECONDS = 2


# --------------------------------------------------------------------------- processes


def probe_backends(port: int, n: int = 4) -> list[str]:
    """Which backends answered n fresh-connection requests (sanity check of the balancing)."""
    seen: list[str] = []
    for _ in range(n):
        try:
            seen.append(http_status(port)[1].strip())
        except (OSError, http.client.HTTPException) as exc:
            seen.append(f"error: {exc!r}")
    return seen


# --------------------------------------------------------------------------- configs


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


def mcplb_conf(
    tmp: Path, port: int, backend_ports: list[int], workers: int, access: bool = False
) -> Path:
    head = [
        f"workers: {workers}",
        "strategy: round_robin",
        # Like the HAProxy and nginx configs: no access log (unless asked for: mcplb-log).
        # The admin API (metrics) stays on.
        f"log: {{access: {'true' if access else 'false'}}}",
        f"admin: {{listen: '{HOST}:0'}}",
        # Plain HTTP backends: with several workers, no MCP session store is needed.
        f"sticky: {{mcp_sessions: {'false' if workers > 1 else 'true'}}}",
    ]
    backends = {f"b{i}": p for i, p in enumerate(backend_ports, 1)}
    path = tmp / "mcplb.yaml"
    path.write_text(mcplb_config(port, head, backends))
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
    # The server's CPU time (user + system, its whole process group) during the measured
    # run: per request, and as a share of one core (below 1.0: not what limited the run).
    cpu_us_per_request: float | None = None
    cpu_share: float | None = None
    cpu_ratio_haproxy: float | None = None
    cpus: list[int] = field(default_factory=list)  # where the server's processes ran
    build: str = ""  # mcplb: the version line the process logged (checked_build)


def bench_target(
    target: str,
    port: int,
    backend_ports: list[int],
    args: argparse.Namespace,
    tmp: Path,
    procs: list[subprocess.Popen[bytes]],
    cpus: set[int],
) -> TargetResult:
    """Start ``target``, pin it to the last of ``cpus``, run wrk at it, and stop it."""
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
        res.server_cmd = mcplb_cmd(conf)
    try:
        if res.server_cmd:
            log_step(target, f"starting: {shlex.join(res.server_cmd)}")
            proc = spawn(res.server_cmd, tmp / f"{target}.log", procs, cwd=REPO_ROOT)
            try:
                wait_http(proc, port, "/", args.start_timeout, log)
            except NotReady as exc:
                res.status, res.reason = "failed", f"failed to start: {exc}"
                log_step(target, res.reason)
                return res
            if target.startswith("mcplb"):
                try:
                    res.build = measured_build(log)
                except WrongBuild as exc:
                    res.status, res.reason = "failed", str(exc)
                    log_step(target, res.reason)
                    return res
                log_step(target, f"measuring {res.build}")
            pids = group_pids(proc.pid)  # nginx: its master and its worker
            pin_proxies(pids, [], cpus)
            res.cpus = sorted(set().union(*(os.sched_getaffinity(pid) for pid in pids)))
            res.backends_seen = probe_backends(port)
            log_step(target, f"ready on port {port}; probes answered by {res.backends_seen}")
        log_step(target, f"warm-up {WARMUP_SECONDS}s")
        _, rc, out = run_wrk(args.threads, args.connections, WARMUP_SECONDS, port, procs)
        if rc != 0:
            res.status, res.reason, res.wrk_output = "failed", f"warm-up wrk exit {rc}", out
            log_step(target, f"{res.reason}\n{out}")
            return res
        log_step(target, f"measuring {args.duration}s")
        cpu_before = group_cpu_seconds({proc.pid}) if proc is not None else 0.0
        res.wrk_cmd, rc, res.wrk_output = run_wrk(
            args.threads, args.connections, args.duration, port, procs
        )
        cpu = group_cpu_seconds({proc.pid}) - cpu_before if proc is not None else None
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
        elif cpu is not None:
            res.cpu_us_per_request = cpu / res.wrk.total_requests * 1e6
            res.cpu_share = cpu / res.wrk.elapsed_s
        cpu_text = (
            ""
            if res.cpu_us_per_request is None or res.cpu_share is None
            else f", CPU {res.cpu_us_per_request:.1f} µs a request ({res.cpu_share:.0%} of a core)"
        )
        log_step(
            target,
            f"{res.wrk.requests_per_sec:,.0f} req/s, p99 {res.wrk.percentiles_ms['p99']:.2f} ms,"
            f" errors {res.wrk.errors}{cpu_text}",
        )
        return res
    finally:
        if proc is not None:
            res.stop = retire(proc, procs, target)


# --------------------------------------------------------------------------- machine / report


def add_ratios(results: list[TargetResult]) -> None:
    def rps(name: str) -> float | None:
        for r in results:
            if r.target == name and r.status == "ok" and r.wrk and r.wrk.requests_per_sec > 0:
                return r.wrk.requests_per_sec
        return None

    haproxy, direct = rps("haproxy"), rps("direct")
    haproxy_cpu = next(
        (r.cpu_us_per_request for r in results if r.target == "haproxy" and r.status == "ok"),
        None,
    )
    for r in results:
        if r.status == "ok" and r.wrk is not None:
            if haproxy:
                r.ratio_haproxy = r.wrk.requests_per_sec / haproxy
            if direct:
                r.ratio_direct = r.wrk.requests_per_sec / direct
            if haproxy_cpu and r.cpu_us_per_request is not None:
                r.cpu_ratio_haproxy = r.cpu_us_per_request / haproxy_cpu


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
        "CPU µs/req",
        "CPU %",
        "CPU /haproxy",
    )
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []

    def ratio(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f}x"

    for r in results:
        if r.status != "ok" or r.wrk is None:
            rows.append((r.target, r.status.upper(), *[""] * (len(head) - 2)))
            notes.append(f"  {r.target}: {r.status}: {one_line(r.reason)}")
            continue
        w = r.wrk
        errs = str(w.errors)
        if w.errors:
            errs += " FAIL"
            notes.append(
                f"  {r.target}: non-2xx/3xx {w.non_2xx_3xx}; socket errors: {w.socket_error_text()}"
            )
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
                "n/a" if r.cpu_us_per_request is None else f"{r.cpu_us_per_request:.1f}",
                "n/a" if r.cpu_share is None else f"{r.cpu_share:.0%}",
                ratio(r.cpu_ratio_haproxy),
            )
        )
    return "\n".join([table(head, rows), *notes])


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
    pinned = sorted({cpu for r in results for cpu in r.cpus})
    if pinned:
        print(f"proxies on CPU {','.join(map(str, pinned))}; wrk and the backends on the others")
    for r in results:
        if r.build:
            print(f"{r.target} measured ({build_label(r.build)}): {r.build}")
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--targets", default=",".join(ALL_TARGETS), help="comma-separated")
    p.add_argument("--mcplb-workers", type=int, default=1)
    add_run_options(p)
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
    machine = machine_info(("wrk", "haproxy", "nginx"))
    catch_signals()
    affinity = os.sched_getaffinity(0)  # pin_proxies narrows it: given back at the end
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[TargetResult] = []
    interrupted = False
    try:
        ports = free_ports(2 + len(args.targets))
        backend_ports, target_ports = ports[:2], ports[2:]
        for n, bport in enumerate(backend_ports, 1):
            name = f"backend{n}"
            conf = nginx_conf(tmp, name, False, nginx_backend(n, bport))
            proc = spawn(nginx_cmd(tmp, name, conf), tmp / f"{name}.log", procs)
            try:
                wait_http(proc, bport, "/", args.start_timeout, tmp / f"{name}.error.log")
            except NotReady as exc:
                print(f"error: backend {n} failed to start: {exc}", file=sys.stderr)
                return 1
        log_step("backends", f"nginx backends ready on ports {backend_ports}")
        # One core for the proxy: each is pinned to the last CPU when it starts; the backends,
        # wrk and this process share the others. Unpinned, whether the scheduler puts a
        # backend or wrk beside the proxy changed from run to run, and with it the proxy's
        # share of its core (82-99% seen) and its req/s.
        cpus = pin_proxies([], [pid for p in procs for pid in group_pids(p.pid)])
        for target, port in zip(args.targets, target_ports, strict=True):
            results.append(bench_target(target, port, backend_ports, args, tmp, procs, cpus))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        os.sched_setaffinity(0, affinity)
        stop_all(procs)
        drop_tmp(tmp, args.keep_tmp)
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
