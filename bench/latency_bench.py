"""Open-loop latency: mcplb beside HAProxy at a fixed request rate.

Usage (from the repository root)::

    .venv/bin/python bench/latency_bench.py [--rate 5000] [--duration 5] [--rounds 3]
        [--connections 50] [--targets direct,reference,mcplb,mcplb-log,haproxy]

Requests are due at a fixed rate whatever the answers do, and each one's latency runs
from the moment it was due to its complete answer (``bench/loadgen.py``: a timerfd keeps
the schedule; a request due while every connection is busy waits, and its wait counts).
So a stall of the proxy shows in every request it delayed: no coordinated omission, unlike
a closed-loop tool such as wrk, whose connections simply stop sending during a stall.

Two nginx backends (the minimal backend of ``bench/minimal.py`` where nginx is missing);
the targets: ``direct`` (backend 1), ``reference`` (the minimal relay), ``mcplb`` (one
worker, access log off), ``mcplb-log`` (the default configuration: access log on, to a
file), as bench/http_bench.py names them, and ``haproxy`` (nbthread 1; skipped when not
installed). The proxies share one CPU, the backends and the load generator the other(s).
All targets stay up; the rounds alternate between them, and the table shows per-target
medians over the rounds.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    NotReady,
    free_ports,
    haproxy_conf,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    measured_build,
    nginx_backend,
    nginx_cmd,
    nginx_conf,
    pin_proxies,
    spawn,
    stop_process,
    table,
    tail,
    wait_http,
)
from bench.loadgen import Result, closed_loop, open_loop  # noqa: E402

ALL_TARGETS = ("direct", "reference", "mcplb", "mcplb-log", "haproxy")
MINIMAL = str(REPO_ROOT / "bench" / "minimal.py")
START_TIMEOUT = 20.0


def mcplb_target(tmp: Path, name: str, port: int, backends: list[int], access: bool) -> list[str]:
    config = tmp / f"{name}.yaml"
    head = ["workers: 1", "admin: {listen: '127.0.0.1:0'}"]
    if not access:
        head.append("log: {access: false}")
    config.write_text(mcplb_config(port, head, {f"b{i}": p for i, p in enumerate(backends)}))
    return mcplb_cmd(config)


def start_backends(tmp: Path, ports: list[int], procs: list[subprocess.Popen[bytes]]) -> None:
    for n, port in enumerate(ports, 1):
        if shutil.which("nginx"):
            conf = nginx_conf(tmp, f"backend{n}", False, nginx_backend(n, port))
            cmd = nginx_cmd(tmp, f"backend{n}", conf)
        else:
            cmd = [mcplb_python(), MINIMAL, "backend", str(port)]
        proc = spawn(cmd, tmp / f"backend{n}.log", procs)
        wait_http(proc, port, "/", START_TIMEOUT, tmp / f"backend{n}.log")


def start_target(
    name: str, port: int, backends: list[int], tmp: Path, procs: list[subprocess.Popen[bytes]]
) -> subprocess.Popen[bytes] | None:
    """Start a proxy target (None for ``direct``); it answers ``GET /`` when this returns."""
    log = tmp / f"{name}.log"
    if name == "direct":
        return None
    if name == "reference":
        cmd = [mcplb_python(), MINIMAL, "relay", str(port), ",".join(map(str, backends))]
    elif name == "haproxy":
        cmd = ["haproxy", "-f", str(haproxy_conf(tmp, port, backends, 1000)), "-db"]
    else:
        cmd = mcplb_target(tmp, name, port, backends, access=name == "mcplb-log")
    proc = spawn(cmd, log, procs, cwd=REPO_ROOT)  # mcplb's access log goes to this file too
    wait_http(proc, port, "/", START_TIMEOUT, log)
    return proc


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


async def run(args: argparse.Namespace) -> int:
    targets = [t for t in args.targets.split(",") if t]
    if "haproxy" in targets and shutil.which("haproxy") is None:
        print("haproxy: not installed, skipped (make bench-tools)", file=sys.stderr)
        targets.remove("haproxy")
    procs: list[subprocess.Popen[bytes]] = []
    runs: dict[str, list[Result]] = {t: [] for t in targets}
    affinity = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="mcplb-latency-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            backends = free_ports(2)
            start_backends(tmp, backends, procs)
            backend_pids = [p.pid for p in procs]
            ports = dict(zip(targets, free_ports(len(targets)), strict=True))
            proxies = []
            for name in targets:
                proc = start_target(name, ports[name], backends, tmp, procs)
                if proc is not None:
                    proxies.append(proc.pid)
                if name == "direct":
                    ports[name] = backends[0]
            pin_proxies(proxies, backend_pids)
            for name in targets:  # warm-up: connections pooled, code paths hot
                await closed_loop(ports[name], 5000, args.connections, 60)
            for n in range(args.rounds):
                order = targets if n % 2 == 0 else targets[::-1]
                for name in order:
                    result = await open_loop(
                        ports[name], args.rate, args.duration, args.connections
                    )
                    runs[name].append(result)
                    print(
                        f"round {n + 1} {name}: p50 {ms(result.percentile(50))} "
                        f"p99 {ms(result.percentile(99))} ms, errors {result.errors}, "
                        f"late {result.late_sends}",
                        file=sys.stderr,
                        flush=True,
                    )
        except (NotReady, ConnectionError) as exc:
            print(f"failed: {exc}", file=sys.stderr)
            for log in sorted(tmp.glob("*.log")):
                print(f"--- {log.name}\n{tail(log)}", file=sys.stderr)
            return 1
        finally:
            os.sched_setaffinity(0, affinity)
            for proc in procs:
                stop_process(proc)
    print(report(runs, args))
    return 0


def report(runs: dict[str, list[Result]], args: argparse.Namespace) -> str:
    def med(name: str, p: float) -> float:
        return statistics.median(r.percentile(p) for r in runs[name])

    rows = []
    for name, results in runs.items():
        ratio = f"{med(name, 99) / med('haproxy', 99):.2f}x" if "haproxy" in runs else "-"
        rows.append(
            [
                name,
                ms(med(name, 50)),
                ms(med(name, 90)),
                ms(med(name, 99)),
                ms(med(name, 99.9)),
                ms(statistics.median(max(r.latencies) for r in results)),
                str(sum(r.errors for r in results)),
                str(sum(r.late_sends for r in results)),
                ratio,
            ]
        )
    head = ["target", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "late"]
    return (
        f"measured: {measured_build()}\n"
        f"open loop, {args.rate:g} req/s for {args.duration:g} s x {args.rounds} rounds, "
        f"{args.connections} connections; medians over the rounds\n"
        + table([*head, "p99/haproxy"], rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--targets", default=",".join(ALL_TARGETS))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.targets.split(",")) - set(ALL_TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(ALL_TARGETS)}")
    import uvloop

    return uvloop.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
