"""CPU time per request of mcplb relative to the reference relay: the regression gate.

Usage (from the repository root)::

    .venv/bin/python bench/cpu_gate.py [--rounds 5] [--requests 20000] [--connections 20]
    .venv/bin/python bench/cpu_gate.py --access-log     # what the access log costs
    PYTHONPATH=build/compiled .venv/bin/python bench/cpu_gate.py    # the compiled build

It starts one minimal backend, the reference relay of ``bench/minimal.py`` and mcplb (one
worker, the default configuration: access log on, here into /dev/null; metrics and health
state on), all on 127.0.0.1. Then, round after round, it sends the same closed-loop load
(``bench/loadgen.py``, in this process) through each of the two in turn, alternating which
goes first, and reads each one's CPU time (user + system, from /proc) before and after.
The figure is mcplb's CPU time per request divided by the reference relay's, per round;
the gate takes the median of the rounds.

Why this figure: on a shared 2-core machine requests per second swing by ±20% between runs,
but the CPU a process spends on one request moves much less, and both processes see the
same machine, load and noise in the same run, so their ratio is steadier still. The limit
(``LIMIT``; ``LIMIT_COMPILED`` for the mypyc build) was set from repeated runs (see
docs/benchmarks.md); ``make test`` runs this through tests/test_perf_gate.py, on both
builds, and fails above it.

The report ends with the version line of the mcplb measured (``measured: ...``), and the
limit is that build's; a pure process where the compiled build was asked for
(``MCPLB_BUILD=compiled``) stops the run. ``bench/cpu_budget.py`` measures MCP requests too.

Exit status: 0 within the limit, 1 above it, 2 a server failed to start or a run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import (  # noqa: E402
    NotReady,
    build_label,
    cpu_seconds,
    free_ports,
    mcplb_cmd,
    mcplb_config,
    mcplb_python,
    measured_build,
    pin_proxies,
    spawn,
    stop_process,
    tail,
    wait_http,
)
from bench.loadgen import REQUEST, closed_loop  # noqa: E402

# mcplb's CPU per request over the reference relay's, median of the rounds. Set from ten
# runs on the project's 2-core machine (idle): medians 2.93-2.99, 2.97 typical. 21% above
# that fails; the noise stayed within 2%. (3.9 before the hot-path work of issue 14's
# second stop, at 3.25 typical.)
LIMIT = 3.6
# The same for the compiled build (setup.py's whole request path and the strategies; ten
# runs on an idle machine: 1.64-1.68, 1.67 typical; 20% above it fails; 2.4 before, at 1.94).
LIMIT_COMPILED = 2.0
START_TIMEOUT = 20.0
RUN_TIMEOUT = 60.0


def limit(build: str) -> float:
    """The limit of the build the measured mcplb printed (its ``mcplb --version`` line)."""
    return LIMIT if "(pure Python)" in build else LIMIT_COMPILED


@dataclass
class GateResult:
    ratios: list[float] = field(default_factory=list)  # per round
    mcplb_us: list[float] = field(default_factory=list)  # CPU µs per request, per round
    reference_us: list[float] = field(default_factory=list)
    seconds: float = 0.0
    build: str = ""  # the mcplb --version line of the mcplb measured (checked_build)

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def limit(self) -> float:
        return limit(self.build)

    def summary(self) -> str:
        return (
            f"mcplb/reference CPU per request: {self.ratio:.2f} "
            f"({build_label(self.build)}, limit {self.limit}; rounds "
            + " ".join(f"{r:.2f}" for r in self.ratios)
            + f"); mcplb {statistics.median(self.mcplb_us):.1f} µs, reference "
            f"{statistics.median(self.reference_us):.1f} µs per request; {self.seconds:.0f} s\n"
            f"measured: {self.build}"
        )


def gate_config(tmp: Path, port: int, backend: int, *settings: str) -> Path:
    """One worker in front of the backend twice (b1 and b2), the admin API on."""
    path = tmp / f"mcplb-{port}.yaml"
    head = ["workers: 1", "admin: {listen: '127.0.0.1:0'}", *settings]
    path.write_text(mcplb_config(port, head, {"b1": backend, "b2": backend}))
    return path


def start_mcplb(
    config: Path,
    log: Path,
    procs: list[subprocess.Popen[bytes]],
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``mcplb run`` with its access log (stdout) written into /dev/null, stderr to ``log``
    (its first line says its build: ``measured_build``)."""
    with open(os.devnull, "wb") as devnull, open(log, "wb") as err:
        proc = subprocess.Popen(
            mcplb_cmd(config),
            stdin=subprocess.DEVNULL,
            stdout=devnull,
            stderr=err,
            cwd=REPO_ROOT,
            env=env,
            start_new_session=True,
        )
    procs.append(proc)
    return proc


async def cpu_per_request(
    pid: int, port: int, requests: int, connections: int, request: bytes = REQUEST
) -> float:
    """CPU seconds process ``pid`` spends per request of a closed-loop run on ``port``."""
    before = cpu_seconds(pid)
    run = await closed_loop(port, requests, connections, RUN_TIMEOUT, request)
    spent = cpu_seconds(pid) - before
    if run.errors:
        raise RuntimeError(f"port {port}: {run.errors} answers were not 200")
    return spent / run.answers


async def alternate(
    targets: dict[str, tuple[int, int]],
    rounds: int,
    requests: int,
    connections: int,
    request: dict[str, bytes] | None = None,
) -> dict[str, list[float]]:
    """CPU µs per request of each target (name -> (pid, port)), one figure per round; the
    order of the targets is reversed every other round. After a warm-up (connections
    pooled, code paths hot) of a fifth of ``requests`` each. ``request``: the bytes each
    target gets (name -> request; a GET / by default)."""
    sent = {name: (request or {}).get(name, REQUEST) for name in targets}
    for name, (_, port) in targets.items():
        await closed_loop(port, requests // 5, connections, RUN_TIMEOUT, sent[name])
    found: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for n in range(rounds):
        for name in names if n % 2 == 0 else names[::-1]:
            pid, port = targets[name]
            found[name].append(
                1e6 * await cpu_per_request(pid, port, requests, connections, sent[name])
            )
    return found


async def measure(rounds: int = 5, requests: int = 20000, connections: int = 20) -> GateResult:
    """Start the three servers, run the alternated rounds, stop everything."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    procs: list[subprocess.Popen[bytes]] = []
    python = mcplb_python()
    minimal = str(REPO_ROOT / "bench" / "minimal.py")
    backend, relay, proxy = free_ports(3)
    affinity = os.sched_getaffinity(0)  # pin_proxies narrows it: given back at the end
    with tempfile.TemporaryDirectory(prefix="mcplb-gate-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            spawn([python, minimal, "backend", str(backend)], tmp / "backend.log", procs)
            targets = {
                "reference": spawn(
                    [python, minimal, "relay", str(relay), f"{backend},{backend}"],
                    tmp / "relay.log",
                    procs,
                ),
            }
            config = gate_config(tmp, proxy, backend)
            targets["mcplb"] = start_mcplb(config, tmp / "mcplb.log", procs)
            ports = {"reference": relay, "mcplb": proxy}
            pin_proxies([p.pid for p in targets.values()], [procs[0].pid])
            for name, proc in targets.items():
                log = tmp / ("mcplb.log" if name == "mcplb" else "relay.log")
                await loop.run_in_executor(
                    None, wait_http, proc, ports[name], "/", START_TIMEOUT, log
                )
            found = await alternate(
                {name: (proc.pid, ports[name]) for name, proc in targets.items()},
                rounds,
                requests,
                connections,
            )
            result = GateResult(
                ratios=[m / r for m, r in zip(found["mcplb"], found["reference"], strict=True)],
                mcplb_us=found["mcplb"],
                reference_us=found["reference"],
                build=measured_build(tmp / "mcplb.log"),
            )
            result.seconds = loop.time() - started
            return result
        except (NotReady, ConnectionError) as exc:
            logs = "\n".join(f"--- {p.name}\n{tail(p)}" for p in sorted(tmp.glob("*.log")))
            raise RuntimeError(f"{exc}\n{logs}") from exc
        finally:
            os.sched_setaffinity(0, affinity)
            for proc in procs:
                stop_process(proc)


async def access_log_cost(rounds: int, requests: int, connections: int) -> str:
    """mcplb with its access log (the default; into /dev/null) against mcplb without, as
    the gate measures: what the log costs per request."""
    procs: list[subprocess.Popen[bytes]] = []
    backend, on, off = free_ports(3)
    affinity = os.sched_getaffinity(0)
    with tempfile.TemporaryDirectory(prefix="mcplb-gate-") as tmpdir:
        tmp = Path(tmpdir)
        try:
            minimal = str(REPO_ROOT / "bench" / "minimal.py")
            spawn([mcplb_python(), minimal, "backend", str(backend)], tmp / "b.log", procs)
            targets = {}
            for name, port, extra in (
                ("log on", on, ()),
                ("log off", off, ("log: {access: false}",)),
            ):
                log = tmp / f"{port}.log"
                proc = start_mcplb(gate_config(tmp, port, backend, *extra), log, procs)
                wait_http(proc, port, "/", START_TIMEOUT, log)
                targets[name] = (proc.pid, port)
            pin_proxies([pid for pid, _ in targets.values()], [procs[0].pid])
            found = await alternate(targets, rounds, requests, connections)
            build = measured_build(tmp / f"{on}.log")
        finally:
            os.sched_setaffinity(0, affinity)
            for proc in procs:
                stop_process(proc)
    with_log, without = (statistics.median(found[n]) for n in ("log on", "log off"))
    return (
        f"measured: {build}\n"
        f"CPU per request: access log on {with_log:.1f} µs, off {without:.1f} µs: the log costs "
        f"{with_log - without:.1f} µs, {without / with_log:.2f}x the requests per CPU second"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="instead of the gate: mcplb with its access log against mcplb without",
    )
    args = parser.parse_args(argv)
    import uvloop

    if args.access_log:
        print(uvloop.run(access_log_cost(args.rounds, args.requests, args.connections)))
        return 0
    try:
        result = uvloop.run(measure(args.rounds, args.requests, args.connections))
    except RuntimeError as exc:
        print(f"gate run failed: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.ratio <= result.limit else 1


if __name__ == "__main__":
    sys.exit(main())
