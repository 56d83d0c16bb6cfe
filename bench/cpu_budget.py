"""CPU time per request of the requests mcplb relays, pure and compiled: the budget against
which new per-request work is measured.

Usage (from the repository root; ``make compiled`` first for the compiled build)::

    .venv/bin/python bench/cpu_budget.py [--rounds 5] [--requests 20000] [--connections 20]
        [--builds pure,compiled] [--pure DIR] [--compiled DIR] [--json out.json]
        [--tracing 0.01,1]

The requests (each a closed-loop run of ``bench/loadgen.py``, as ``bench/cpu_gate.py``):

  http       GET / (what the gate measures)
  mcp        an MCP JSON-RPC POST (tools/call) with the Mcp-Session-Id that mcplb bound at
             an initialize through it (the memory session store), and MCP-Protocol-Version
  mcp-2026   the same POST with the 2026-07-28 routing headers: MCP-Protocol-Version:
             2026-07-28, Mcp-Method: tools/call, Mcp-Name: echo

The targets run side by side, all pinned to one CPU (the backend and this process on the
others): the reference relay of bench/minimal.py and one mcplb per build (one worker, the
default configuration: access log on, into /dev/null; metrics on), the pure build importing
``--pure`` (the checkout) and the compiled one ``--compiled`` (build/compiled). Each mcplb's
build is the one its log's version line names, and a target called compiled that runs pure
stops the run (``checked_build``). The rounds alternate the order of the targets; the figure
is the median CPU µs per request (user + system from /proc), and its ratio to the reference
relay's in the same rounds, and the difference (what mcplb adds to the relaying itself).
The requests run one after the other: compare the kinds of request by those two columns,
which the load of the moment moves less than the absolute figures.

``--tracing RATIOS``: beside each build, one more mcplb of that build per ratio with tracing
on (``tracing.sample_ratio`` RATIO; the spans exported over OTLP/HTTP to the backend, which
answers 200 to anything as a collector would), and a column of what it adds to the same
build with tracing off, in the same rounds.

The budget (docs/benchmarks.md): each per-request feature to come (header validation against
the body, task routing, JWT checks, tracing) adds at most 1.5 µs per request to the compiled
build's figures here when it is on, and nothing measurable when it is off.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    HOST,
    NotReady,
    WrongBuild,
    build_label,
    free_ports,
    logged_version,
    machine_info,
    mcplb_python,
    pin_proxies,
    spawn,
    stop_process,
    table,
    tail,
    wait_http,
)
from bench.cpu_gate import START_TIMEOUT, alternate, gate_config, start_mcplb  # noqa: E402
from bench.loadgen import REQUEST  # noqa: E402

SCENARIOS = ("http", "mcp", "mcp-2026")
BUILDS = ("pure", "compiled")
MINIMAL = str(REPO_ROOT / "bench" / "minimal.py")
CALL = (
    b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hello"}}}'
)
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"cpu_budget","version":"1"}}}'
)


def mcp_request(session: str, routing_headers: bool) -> bytes:
    """The tools/call POST of the ``mcp`` (or, with the routing headers, ``mcp-2026``) run."""
    head = [
        b"POST /mcp HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Content-Type: application/json",
        b"Accept: application/json, text/event-stream",
        b"Mcp-Session-Id: " + session.encode("ascii"),
    ]
    if routing_headers:
        head += [
            b"MCP-Protocol-Version: 2026-07-28",
            b"Mcp-Method: tools/call",
            b"Mcp-Name: echo",
        ]
    else:
        head.append(b"MCP-Protocol-Version: 2025-11-25")
    head.append(b"Content-Length: %d" % len(CALL))
    return b"\r\n".join(head) + b"\r\n\r\n" + CALL


def open_session(port: int) -> str:
    """An MCP initialize through the proxy on ``port``: the session id it answered with."""
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request(
            "POST",
            "/mcp",
            INITIALIZE,
            {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"},
        )
        response = conn.getresponse()
        response.read()
        session = response.getheader("Mcp-Session-Id")
    finally:
        conn.close()
    if response.status != 200 or not session:
        raise RuntimeError(f"port {port}: initialize answered {response.status}, no session id")
    return session


def tree_env(tree: Path) -> dict[str, str]:
    """This environment with ``tree``'s mcplb first on the path (mcplb_cmd runs python -P)."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *rest])}


def checked(name: str, line: str | None) -> str:
    """The version line of the mcplb called ``name``, which must run that build."""
    if line is None:
        raise NotReady(f"{name}: no version line in its log")
    compiled = "(compiled: " in line
    if compiled != (name == "compiled"):
        raise WrongBuild(f"the {name} build was asked for, the process runs {line}")
    return line


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[subprocess.Popen[bytes]] = []
    affinity = os.sched_getaffinity(0)
    builds: dict[str, str] = {}
    found: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="mcplb-budget-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            variants = [(name, ratio) for name in args.builds for ratio in (None, *args.tracing)]
            backend, relay, *ports = free_ports(2 + len(variants))
            python = mcplb_python()
            backend_proc = spawn([python, MINIMAL, "backend", str(backend)], tmp / "b.log", procs)
            wait_http(backend_proc, backend, "/", START_TIMEOUT, tmp / "b.log")
            reference = spawn(
                [python, MINIMAL, "relay", str(relay), f"{backend},{backend}"],
                tmp / "relay.log",
                procs,
            )
            wait_http(reference, relay, "/", START_TIMEOUT, tmp / "relay.log")
            targets = {"reference": (reference.pid, relay)}
            sessions = {"reference": "bench-session-0"}
            for (name, ratio), port in zip(variants, ports, strict=True):
                target = target_name(name, ratio)
                log = tmp / f"{target.replace(' ', '-')}.log"
                tree = Path(getattr(args, name))
                settings = [] if ratio is None else [tracing_setting(backend, ratio)]
                config = gate_config(tmp, port, backend, *settings)
                proc = start_mcplb(config, log, procs, tree_env(tree))
                wait_http(proc, port, "/", START_TIMEOUT, log)
                # Keyed by build (pure, compiled); a tracing variant by its target name.
                builds[name if ratio is None else target] = checked(name, logged_version(log))
                targets[target] = (proc.pid, port)
                sessions[target] = open_session(port)
            pin_proxies([pid for pid, _ in targets.values()], [backend_proc.pid])
            for scenario in SCENARIOS:
                sent = {
                    name: REQUEST
                    if scenario == "http"
                    else mcp_request(sessions[name], scenario == "mcp-2026")
                    for name in targets
                }
                print(f"[{scenario}] measuring", file=sys.stderr, flush=True)
                found[scenario] = await alternate(
                    targets, args.rounds, args.requests, args.connections, sent
                )
        except (NotReady, ConnectionError, RuntimeError) as exc:
            logs = "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(tmp.glob("*.log")))
            raise RuntimeError(f"{exc}\n{logs}") from exc
        finally:
            os.sched_setaffinity(0, affinity)
            for proc in procs:
                stop_process(proc)
    return {"builds": builds, "found": found}


def target_name(build: str, ratio: float | None) -> str:
    return f"mcplb {build}" if ratio is None else f"mcplb {build} tracing {ratio:g}"


def tracing_setting(collector: int, ratio: float) -> str:
    """The config line that turns tracing on, exporting to ``collector`` (a port)."""
    endpoint = f"http://{HOST}:{collector}/v1/traces"
    return f"tracing: {{endpoint: '{endpoint}', sample_ratio: {ratio}, export_interval: 1s}}"


def report(args: argparse.Namespace, data: dict[str, Any]) -> str:
    found: dict[str, dict[str, list[float]]] = data["found"]
    head = ["request", "reference µs"]
    for name in args.builds:
        head += [f"mcplb {name} µs", "/reference", "added µs"]
        for ratio in args.tracing:
            head += [f"{name} tracing {ratio:g} µs", "tracing adds µs"]
    rows = []
    medians: dict[str, dict[str, float]] = {}
    for scenario, runs in found.items():
        us = {name: statistics.median(values) for name, values in runs.items()}
        medians[scenario] = us
        row = [scenario, f"{us['reference']:.1f}"]
        for name in args.builds:
            mcplb = us[f"mcplb {name}"]
            added = mcplb - us["reference"]
            row += [f"{mcplb:.1f}", f"{mcplb / us['reference']:.2f}x", f"{added:.1f}"]
            for ratio in args.tracing:
                traced = us[target_name(name, ratio)]
                row += [f"{traced:.1f}", f"{traced - mcplb:+.1f}"]
        rows.append(row)
    data["median_us"] = medians
    lines = [
        f"command: {shlex.join([sys.executable, *sys.argv])}",
        f"CPU µs per request, median of {args.rounds} alternated rounds of {args.requests} "
        f"requests over {args.connections} connections; proxies pinned to one CPU",
        "machine: " + ", ".join(f"{k}={v}" for k, v in machine_info().items()),
        *(f"measured ({build_label(line)}): {line}" for line in data["builds"].values()),
        "",
        table(head, rows),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--connections", type=int, default=20)
    compiled = REPO_ROOT / "build" / "compiled"
    p.add_argument(
        "--builds",
        default="pure,compiled" if compiled.is_dir() else "pure",
        help="comma-separated, of pure,compiled (default: both when build/compiled exists)",
    )
    p.add_argument("--pure", type=Path, default=REPO_ROOT, help="the pure tree (a checkout)")
    p.add_argument("--compiled", type=Path, default=compiled, help="the tree `make compiled` made")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument(
        "--tracing",
        default="",
        help="comma-separated sample ratios: one more mcplb per build and ratio, tracing on",
    )
    args = p.parse_args(argv)
    try:
        args.tracing = [float(r) for r in args.tracing.split(",") if r.strip()]
    except ValueError:
        p.error("--tracing: comma-separated numbers from 0 to 1, e.g. 0.01,1")
    if any(not 0 <= r <= 1 for r in args.tracing):
        p.error("--tracing: ratios from 0 to 1")
    args.builds = [b.strip() for b in args.builds.split(",") if b.strip()]
    if not args.builds or set(args.builds) - set(BUILDS):
        p.error(f"--builds: choose from {','.join(BUILDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import uvloop

    try:
        data = uvloop.run(measure(args))
    except RuntimeError as exc:
        print(f"budget run failed: {exc}", file=sys.stderr)
        return 2
    print(report(args, data))
    if args.json:
        args.json.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
