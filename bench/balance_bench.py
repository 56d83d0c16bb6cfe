"""Balance-quality benchmark: how each strategy spreads load over two fast and one slow backend.

Usage (from the repository root)::

    .venv/bin/python bench/balance_bench.py [--duration 10] [--connections 30]
        [--strategies round_robin,least_connections,power_of_two,random,ip_hash]
        [--slow-delay 0.2] [--seed 1] [--warmup 1] [--json out.json]

It starts ONE subprocess (a small aiohttp app, embedded below, run with the venv python) that
serves three backends on three free 127.0.0.1 ports: ``fast-1`` and ``fast-2`` answer at once,
``slow`` answers after ``await asyncio.sleep(0.2)``; each answers its own name as the body.
Then, for every strategy, it starts mcplb (``python -m mcplb.proxy.cli run --config FILE``, one
worker) in front of them, waits until it answers ``GET /`` with 200, runs an optional short
warm-up, and applies a fixed closed-loop load with ``wrk -t1 -c30 -d10s --latency -s tally.lua``.
The Lua script tallies each response body (the backend's name) per wrk thread and prints the
merged tallies in ``done()``, which gives each backend's share of the requests.

The table shows, per strategy: req/s, the share of fast-1 / fast-2 / slow (%), p50/p90/p99
latency and errors. The percentiles are wrk's, which are corrected for coordinated omission
(wrk's stats_correct: every response slower than the mean per-connection interval, runtime /
(requests / connections), adds synthetic samples at that interval below it). So when a fast
strategy gets a few 200 ms responses among many fast ones, each adds dozens of synthetic samples
and p90/p99 rise well above what the slow share alone suggests; the slow share is the direct
balance measure. ``ip_hash`` is a reference row only: all wrk connections come from
127.0.0.1, so it sends everything to one backend (which one depends on the hash).

Expectation recorded here: a load-aware strategy (least_connections, power_of_two) sends less
traffic to the slow backend than round_robin and so shows a lower p99.

Exit status: 0 all good; 1 a server failed to start, a wrk run failed or a required tool is
missing; 2 every run completed but some reported non-2xx/3xx responses or socket errors;
3 the expectation did not hold (least_connections or power_of_two p99 not below round_robin's;
the table is printed anyway); 130 interrupted. Every process started here is stopped (SIGTERM,
then SIGKILL) and the temp dir removed, also on Ctrl-C / SIGTERM. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import json
import re
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
    NotReady,
    WrkResult,
    add_run_options,
    catch_signals,
    drop_tmp,
    free_ports,
    log_step,
    machine_info,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
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
)
from bench.http_bench import probe_backends  # noqa: E402

DEFAULT_STRATEGIES = ("round_robin", "least_connections", "power_of_two", "random", "ip_hash")
LOAD_AWARE = ("least_connections", "power_of_two")
BASELINE = "round_robin"
REFERENCE_NOTES = {
    "ip_hash": "reference only: every wrk connection comes from 127.0.0.1, so one backend "
    "gets everything",
    "least_sessions": "reference only: not load-aware (routes on MCP sessions, none here)",
}
BACKENDS = ("fast-1", "fast-2", "slow")
TALLY_PREFIX = "balance-tally"

# --------------------------------------------------------------------------- embedded scripts

BACKEND_APP = '''\
"""Three tiny HTTP backends in one process: each answers its own name as the body."""

import asyncio
import signal
import sys

from aiohttp import web


def make_app(name: str, delay: float) -> web.Application:
    body = name.encode()

    async def handle(request: web.Request) -> web.Response:
        if delay > 0:
            await asyncio.sleep(delay)
        return web.Response(body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def main() -> None:
    runners = []
    for spec in sys.argv[1:]:  # name:port:delay_seconds
        name, port, delay = spec.split(":")
        runner = web.AppRunner(make_app(name, float(delay)), access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", int(port), backlog=1024).start()
        runners.append(runner)
        print(f"{name} listening on 127.0.0.1:{port} (delay {delay}s)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()


try:
    import uvloop
except ImportError:
    asyncio.run(main())
else:
    uvloop.run(main())
'''

# wrk runs response() in each thread's Lua state and done() in the main state, so the
# per-thread tallies are collected through setup(thread) + thread:get("tally").
TALLY_LUA = f"""\
-- Tally response bodies (the backend's name) per wrk thread; merge and print them in done().
local threads = {{}}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   tally = {{}}
end

function response(status, headers, body)
   local key
   if status == 200 then
      key = string.gsub(string.sub(body or "", 1, 64), "%s+", "_")
      if key == "" then key = "(empty)" end
   else
      key = "HTTP_" .. status
   end
   tally[key] = (tally[key] or 0) + 1
end

function done(summary, latency, requests)
   local total = {{}}
   for _, thread in ipairs(threads) do
      local t = thread:get("tally")
      if t then
         for k, v in pairs(t) do total[k] = (total[k] or 0) + v end
      end
   end
   for k, v in pairs(total) do
      io.write(string.format("{TALLY_PREFIX}\\t%s\\t%d\\n", k, v))
   end
   io.write("{TALLY_PREFIX}-end\\n")
end
"""


def parse_tallies(text: str) -> dict[str, int]:
    """The ``balance-tally<TAB>name<TAB>count`` lines printed by TALLY_LUA's done()."""
    if f"{TALLY_PREFIX}-end" not in text:
        raise ValueError(f"wrk output has no {TALLY_PREFIX}-end line (Lua done() did not run)")
    tallies: dict[str, int] = {}
    for m in re.finditer(rf"^{TALLY_PREFIX}\t(\S+)\t(\d+)$", text, re.MULTILINE):
        tallies[m[1]] = tallies.get(m[1], 0) + int(m[2])
    return tallies


# --------------------------------------------------------------------------- one strategy


@dataclass
class StrategyResult:
    strategy: str
    status: str  # "ok" | "failed"
    reason: str = ""
    strategy_options: dict[str, Any] = field(default_factory=dict)
    server_cmd: list[str] = field(default_factory=list)
    wrk_cmd: list[str] = field(default_factory=list)
    backends_seen: list[str] = field(default_factory=list)
    tallies: dict[str, int] = field(default_factory=dict)
    shares_pct: dict[str, float] = field(default_factory=dict)
    wrk: WrkResult | None = None
    wrk_output: str = ""
    stop: str = ""
    note: str = ""


def strategy_options(name: str, seed: int) -> dict[str, Any]:
    """``{"seed": seed}`` if the strategy accepts a seed (random ones), else ``{}``."""
    from mcplb.strategies import registry

    try:
        registry.build(name, {"seed": seed})
    except registry.StrategyLoadError:
        return {}
    return {"seed": seed}


def mcplb_conf(tmp: Path, port: int, name: str, options: dict[str, Any], ports: list[int]) -> Path:
    head = ["workers: 1", f"strategy: {name}"]
    if options:
        head.append("strategy_options:")
        head += [f"  {key}: {json.dumps(value)}" for key, value in options.items()]
    path = tmp / f"mcplb-{name}.yaml"
    path.write_text(mcplb_config(port, head, dict(zip(BACKENDS, ports, strict=True))))
    return path


def bench_strategy(
    name: str,
    port: int,
    backend_ports: list[int],
    backend_proc: subprocess.Popen[bytes],
    args: argparse.Namespace,
    tmp: Path,
    lua: Path,
    procs: list[subprocess.Popen[bytes]],
) -> StrategyResult:
    res = StrategyResult(strategy=name, status="ok", note=REFERENCE_NOTES.get(name, ""))
    res.strategy_options = strategy_options(name, args.seed)
    conf = mcplb_conf(tmp, port, name, res.strategy_options, backend_ports)
    res.server_cmd = mcplb_cmd(conf)
    log = tmp / f"mcplb-{name}.log"
    log_step(name, f"starting: {shlex.join(res.server_cmd)}")
    proc = spawn(res.server_cmd, log, procs, cwd=REPO_ROOT)
    try:
        try:
            wait_http(proc, port, "/", args.start_timeout, log)
        except NotReady as exc:
            res.status, res.reason = "failed", f"failed to start: {exc}"
            log_step(name, res.reason)
            return res
        res.backends_seen = probe_backends(port, 3)
        log_step(name, f"ready on port {port}; probes answered by {res.backends_seen}")
        if args.warmup > 0:
            log_step(name, f"warm-up {args.warmup}s")
            _, rc, out = run_wrk(args.threads, args.connections, args.warmup, port, procs)
            if rc != 0:
                res.status, res.reason, res.wrk_output = "failed", f"warm-up wrk exit {rc}", out
                log_step(name, f"{res.reason}\n{out}")
                return res
        log_step(name, f"measuring {args.duration}s")
        res.wrk_cmd, rc, res.wrk_output = run_wrk(
            args.threads, args.connections, args.duration, port, procs, lua
        )
        if rc != 0:
            res.status, res.reason = "failed", f"wrk exit {rc}"
            log_step(name, f"{res.reason}\n{res.wrk_output}")
            return res
        try:
            res.wrk = parse_wrk_output(res.wrk_output)
            res.tallies = parse_tallies(res.wrk_output)
        except ValueError as exc:
            res.status, res.reason = "failed", f"unparsable wrk output: {exc}"
            return res
        counted = sum(res.tallies.values())
        if counted:
            res.shares_pct = {k: 100.0 * v / counted for k, v in sorted(res.tallies.items())}
        if proc.poll() is not None:
            res.status = "failed"
            res.reason = f"mcplb exited ({proc.returncode}) during the run\n{tail(log)}"
        elif backend_proc.poll() is not None:
            res.status = "failed"
            res.reason = f"the backends exited ({backend_proc.returncode}) during the run"
        elif res.wrk.total_requests == 0 or counted == 0:
            res.status, res.reason = "failed", "wrk completed no request"
        shares = ", ".join(f"{k} {v:.1f}%" for k, v in res.shares_pct.items())
        log_step(
            name,
            f"{res.wrk.requests_per_sec:,.0f} req/s, p99 {res.wrk.percentiles_ms['p99']:.2f} ms,"
            f" errors {res.wrk.errors}; shares: {shares}",
        )
        return res
    finally:
        res.stop = retire(proc, procs, name)


# --------------------------------------------------------------------------- report


def check_expectation(
    results: list[StrategyResult], requested: list[str]
) -> tuple[bool, list[str]]:
    """Whether every requested load-aware strategy shows a lower p99 than round_robin."""
    p99 = {
        r.strategy: r.wrk.percentiles_ms["p99"]
        for r in results
        if r.status == "ok" and r.wrk is not None
    }
    compared = [name for name in LOAD_AWARE if name in requested]
    if BASELINE not in requested or not compared:
        return True, [f"expectation not checked: needs {BASELINE} and one of {LOAD_AWARE}"]
    if BASELINE not in p99:
        return False, [f"expectation FAILED: no successful {BASELINE} run to compare with"]
    lines: list[str] = []
    ok = True
    for name in compared:
        if name not in p99:
            ok = False
            lines.append(f"expectation FAILED: no successful {name} run to compare")
            continue
        better = p99[name] < p99[BASELINE]
        ok = ok and better
        verdict = "holds" if better else "FAILED"
        lines.append(
            f"expectation {verdict}: {name} p99 {p99[name]:.2f} ms"
            f" {'<' if better else '>='} {BASELINE} p99 {p99[BASELINE]:.2f} ms"
        )
    return ok, lines


def format_table(results: list[StrategyResult]) -> str:
    head = ("strategy", "req/s", *(f"{b} %" for b in BACKENDS), "other %")
    head += ("p50 ms", "p90 ms", "p99 ms", "errors")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for r in results:
        if r.status != "ok" or r.wrk is None:
            rows.append((r.strategy, r.status.upper(), *([""] * (len(head) - 2))))
            notes.append(f"  {r.strategy}: {r.status}: {one_line(r.reason)}")
            continue
        w = r.wrk
        other = sum(v for k, v in r.shares_pct.items() if k not in BACKENDS)
        if other:
            odd = {k: v for k, v in r.tallies.items() if k not in BACKENDS}
            notes.append(f"  {r.strategy}: unexpected responses: {odd}")
        errs = str(w.errors)
        if w.errors:
            errs += " FAIL"
            notes.append(
                f"  {r.strategy}: non-2xx/3xx {w.non_2xx_3xx};"
                f" socket errors: {w.socket_error_text()}"
            )
        if r.note:
            notes.append(f"  {r.strategy}: {r.note}")
        rows.append(
            (
                r.strategy,
                f"{w.requests_per_sec:,.0f}",
                *(f"{r.shares_pct.get(b, 0.0):.1f}" for b in BACKENDS),
                f"{other:.1f}",
                f"{w.percentiles_ms['p50']:.2f}",
                f"{w.percentiles_ms['p90']:.2f}",
                f"{w.percentiles_ms['p99']:.2f}",
                errs,
            )
        )
    return "\n".join([table(head, rows), *notes])


def bench_machine_info() -> dict[str, Any]:
    info = machine_info(("wrk",))
    info["aiohttp"] = package_version("aiohttp")
    return info


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    p.add_argument("--connections", type=int, default=30, help="wrk connections (-c)")
    p.add_argument("--threads", type=int, default=1, help="wrk threads (-t)")
    p.add_argument(
        "--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated names"
    )
    p.add_argument("--slow-delay", type=float, default=0.2, help="seconds the slow backend waits")
    p.add_argument("--seed", type=int, default=1, help="seed for strategies accepting one")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up wrk (0: none)")
    add_run_options(p)
    args = p.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not args.strategies or len(set(args.strategies)) != len(args.strategies):
        p.error("--strategies must name at least one strategy, each once")
    if args.duration < 1 or args.connections < 1 or args.threads < 1:
        p.error("--duration, --connections and --threads must be >= 1")
    if args.connections < args.threads:
        p.error("wrk needs --connections >= --threads")
    if args.warmup < 0 or args.slow_delay < 0 or args.start_timeout <= 0:
        p.error("--warmup and --slow-delay must be >= 0, --start-timeout > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("error: wrk is not on PATH", file=sys.stderr)
        return 1
    command = shlex.join([sys.executable, *sys.argv])
    machine = bench_machine_info()
    catch_signals()
    tmp = Path(tempfile.mkdtemp(prefix="mcplb-balance-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: list[StrategyResult] = []
    backend_cmd: list[str] = []
    interrupted = False
    failed_setup = False
    try:
        ports = free_ports(len(BACKENDS) + len(args.strategies))
        backend_ports, proxy_ports = ports[: len(BACKENDS)], ports[len(BACKENDS) :]
        app = tmp / "backends.py"
        app.write_text(BACKEND_APP)
        lua = tmp / "tally.lua"
        lua.write_text(TALLY_LUA)
        delays = (0.0, 0.0, args.slow_delay)
        backend_cmd = [mcplb_python(), str(app)]
        backend_cmd += [
            f"{n}:{p}:{d}" for n, p, d in zip(BACKENDS, backend_ports, delays, strict=True)
        ]
        log_step("backends", f"starting: {shlex.join(backend_cmd)}")
        backend_log = tmp / "backends.log"
        backend_proc = spawn(backend_cmd, backend_log, procs, cwd=REPO_ROOT)
        try:
            for bport in backend_ports:
                wait_http(backend_proc, bport, "/", args.start_timeout, backend_log)
        except NotReady as exc:
            print(f"error: backends failed to start: {exc}", file=sys.stderr)
            failed_setup = True
        else:
            log_step("backends", f"ready: {dict(zip(BACKENDS, backend_ports, strict=True))}")
            for name, port in zip(args.strategies, proxy_ports, strict=True):
                if backend_proc.poll() is not None:
                    print(f"error: backends exited\n{tail(backend_log)}", file=sys.stderr)
                    failed_setup = True
                    break
                results.append(
                    bench_strategy(name, port, backend_ports, backend_proc, args, tmp, lua, procs)
                )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; cleaning up", file=sys.stderr)
    finally:
        stop_all(procs)
        drop_tmp(tmp, args.keep_tmp)

    expectation_ok, expectation = check_expectation(results, args.strategies)
    wrk_cmd = next((r.wrk_cmd for r in results if r.wrk_cmd), [])
    print()
    print(f"command: {command}")
    print(
        f"backends: {shlex.join(backend_cmd)}  (fast-1, fast-2 immediate; slow +{args.slow_delay}s)"
    )
    print(f"mcplb: {mcplb_python()} -m mcplb.proxy.cli run --config FILE  (workers 1)")
    print(
        f"wrk: {shlex.join(wrk_cmd) if wrk_cmd else '(not run)'}  (after a {args.warmup}s warm-up)"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print()
    print(format_table(results))
    print(
        "\nlatency percentiles are wrk's, corrected for coordinated omission (synthetic samples"
        " for every response slower than runtime/(requests/connections)); see --help."
    )
    print()
    for line in expectation:
        print(line)
    if args.json:
        data: dict[str, Any] = {
            "command": command,
            "settings": {
                "duration_s": args.duration,
                "connections": args.connections,
                "threads": args.threads,
                "warmup_s": args.warmup,
                "slow_delay_s": args.slow_delay,
                "seed": args.seed,
                "strategies": args.strategies,
                "backend_cmd": backend_cmd,
            },
            "machine": machine,
            "results": [asdict(r) for r in results],
            "expectation": {"holds": expectation_ok, "details": expectation},
            "interrupted": interrupted,
        }
        for item, r in zip(data["results"], results, strict=True):
            if r.wrk is not None:
                item["wrk"]["errors"] = r.wrk.errors
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if interrupted:
        return 130
    if failed_setup or any(r.status == "failed" for r in results):
        return 1
    if not expectation_ok:
        return 3
    if any(r.wrk is not None and r.wrk.errors for r in results):
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
