"""Microbenchmark of ``Strategy.pick()``: nanoseconds per pick for every built-in strategy.

Usage (from the repository root)::

    .venv/bin/python bench/pick_bench.py [--picks 200000] [--repeat 5] [--backends 100]
        [--strategies round_robin,least_connections,power_of_two,random,least_sessions,ip_hash]
        [--json out.json]
    .venv/bin/python bench/pick_bench.py --scaling [--sizes 2,100,1000] [--picks 20000]

``--scaling`` reports one table: ns per pick of every strategy at each size in ``--sizes`` (the
same list object on every pick, as the relay passes ``Cluster.routable``), and the ratio of the
largest size to the smallest. A pick in O(1) or O(log n) keeps that ratio near 1. Its defaults
are smaller (20,000 timed picks x 3 repetitions after 20,000 warm-up picks) because an O(n)
strategy at 1,000 backends takes ~100 us a pick.

Every strategy is built with ``strategies.registry.build(name, options)`` (``seed`` for the
strategies that accept one, other options at their defaults) and asked to pick among 100 plain
backend objects (the BackendView attributes, ``__slots__``): weights 1..5, random ``in_flight``
0..20 (``streams`` a few of those), random ``sessions`` 0..200, no ``max_sessions``, all
available. The same list object is passed on every pick, as the relay does. Requests are
realistic RequestFacts (POST /mcp, seven typical headers, no session id) whose client address is
drawn at random from a pool of 10,000 IPv4 addresses (it matters for ip_hash); like the relay,
strategies with ``uses_request = False`` get ``NO_FACTS`` instead. The backends' counters stay
fixed during a run (pick() alone is timed; nothing completes requests).

Per case: a warm-up of 20,000 picks (which also records how many distinct backends were
picked, as a sanity check), then 5 timed repetitions of 200,000 picks each with
``time.perf_counter_ns`` around a plain ``for`` loop, the garbage collector disabled while
timing. Reported: the median ns per pick and picks/s, plus min/max over the repetitions. The
``(loop baseline)`` row times the same loop calling a trivial ``pick`` that returns the first
backend: the loop-and-call overhead included in every other row. An extra row times round_robin
with 3 backends (the common case).

Exit status: 0 all good; 1 a strategy could not be built or a pick returned None.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import machine_info, table  # noqa: E402
from mcplb.strategies import registry  # noqa: E402
from mcplb.strategies.base import NO_FACTS, RequestFacts  # noqa: E402

DEFAULT_STRATEGIES = tuple(registry.BUILTIN)  # every built-in strategy, in the registry's order
BASELINE = "(loop baseline)"
HEADERS_TEMPLATE = (
    (b"host", b"mcp.example.internal:8080"),
    (b"user-agent", b"python-httpx/0.28.1"),
    (b"accept", b"application/json, text/event-stream"),
    (b"content-type", b"application/json"),
    (b"content-length", b"187"),
    (b"mcp-protocol-version", b"2025-06-18"),
    (b"accept-encoding", b"gzip, deflate"),
)

PickFn = Callable[[Sequence[Any], RequestFacts], Any]


class FakeBackend:
    """A plain object with the BackendView attributes (like cluster.backends.Backend)."""

    __slots__ = ("available", "in_flight", "max_sessions", "name", "sessions", "streams", "weight")

    def __init__(self, name: str, weight: int, in_flight: int, streams: int, sessions: int) -> None:
        self.name = name
        self.weight = weight
        self.in_flight = in_flight
        self.streams = streams
        self.sessions = sessions
        self.max_sessions: int | None = None
        self.available = True

    @property
    def base_weight(self) -> int:
        return self.weight


def make_backends(n: int, rng: random.Random) -> list[FakeBackend]:
    backends = []
    for i in range(n):
        in_flight = rng.randint(0, 20)
        backends.append(
            FakeBackend(
                name=f"mcp-{i:04d}",
                weight=rng.randint(1, 5),
                in_flight=in_flight,
                streams=rng.randint(0, min(in_flight, 3)),
                sessions=rng.randint(0, 200),
            )
        )
    return backends


def make_facts(addresses: int, picks: int, rng: random.Random) -> list[RequestFacts]:
    """``picks`` request facts, client addresses drawn at random from ``addresses`` distinct."""
    seen: set[str] = set()
    while len(seen) < addresses:
        seen.add(f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    pool = [
        RequestFacts(address, "POST", "/mcp", list(HEADERS_TEMPLATE), None)
        for address in sorted(seen)
    ]
    return [pool[rng.randrange(addresses)] for _ in range(picks)]


def strategy_options(name: str, seed: int) -> dict[str, Any]:
    """``{"seed": seed}`` if the strategy accepts a seed (random ones), else ``{}``."""
    try:
        registry.build(name, {"seed": seed})
    except registry.StrategyLoadError:
        return {}
    return {"seed": seed}


def time_loop(pick: PickFn, backends: Sequence[Any], facts: Sequence[RequestFacts]) -> int:
    """Nanoseconds for one pick per element of ``facts``."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for request in facts:
            pick(backends, request)
        return time.perf_counter_ns() - start
    finally:
        gc.enable()


def baseline_pick(backends: Sequence[Any], request: RequestFacts) -> Any:
    return backends[0]


@dataclass
class CaseResult:
    case: str
    strategy: str
    backends: int
    status: str  # "ok" | "failed"
    reason: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    facts: str = ""  # "RequestFacts" or "NO_FACTS"
    distinct_picked_in_warmup: int = 0
    rep_ns_per_pick: list[float] = field(default_factory=list)
    ns_per_pick: float = 0.0  # median
    picks_per_sec: float = 0.0  # from the median


def run_case(
    case: str,
    strategy: str,
    backends: list[FakeBackend],
    facts: list[RequestFacts],
    args: argparse.Namespace,
) -> CaseResult:
    res = CaseResult(case=case, strategy=strategy, backends=len(backends), status="ok")
    pick: PickFn
    if strategy == BASELINE:
        pick, res.facts = baseline_pick, "RequestFacts"
    else:
        res.options = strategy_options(strategy, args.seed)
        try:
            built = registry.build(strategy, res.options)
        except registry.StrategyLoadError as exc:
            res.status, res.reason = "failed", str(exc)
            return res
        pick = built.pick
        if not built.uses_request:  # the relay skips building RequestFacts for these
            facts = [NO_FACTS] * len(facts)
            res.facts = "NO_FACTS"
        else:
            res.facts = "RequestFacts"
    picked: set[str] = set()
    for request in facts[: args.warmup]:
        chosen = pick(backends, request)
        if chosen is None:
            res.status, res.reason = "failed", "pick() returned None with all backends available"
            return res
        picked.add(chosen.name)
    res.distinct_picked_in_warmup = len(picked)
    timed = facts[args.warmup : args.warmup + args.picks]
    for _ in range(args.repeat):
        res.rep_ns_per_pick.append(time_loop(pick, backends, timed) / len(timed))
    res.ns_per_pick = statistics.median(res.rep_ns_per_pick)
    res.picks_per_sec = 1e9 / res.ns_per_pick if res.ns_per_pick > 0 else 0.0
    return res


def format_table(results: list[CaseResult]) -> str:
    head = ("case", "backends", "ns/pick", "picks/s", "min ns", "max ns", "distinct", "facts")
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for r in results:
        if r.status != "ok":
            rows.append((r.case, str(r.backends), r.status.upper(), "", "", "", "", ""))
            notes.append(f"  {r.case}: {r.reason}")
            continue
        rows.append(
            (
                r.case,
                str(r.backends),
                f"{r.ns_per_pick:,.0f}",
                f"{r.picks_per_sec:,.0f}",
                f"{min(r.rep_ns_per_pick):,.0f}",
                f"{max(r.rep_ns_per_pick):,.0f}",
                str(r.distinct_picked_in_warmup),
                r.facts,
            )
        )
    return "\n".join([table(head, rows, left=(0, len(head) - 1)), *notes])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--picks", type=int, help="timed picks per repetition (200,000; 20,000)")
    p.add_argument("--warmup", type=int, default=20_000, help="untimed picks first")
    p.add_argument("--repeat", type=int, help="repetitions, median reported (5; 3)")
    p.add_argument(
        "--scaling", action="store_true", help="one table: every strategy at each of --sizes"
    )
    p.add_argument("--sizes", default="2,100,1000", help="backend counts for --scaling")
    p.add_argument("--backends", type=int, default=100, help="backends per pick")
    p.add_argument("--addresses", type=int, default=10_000, help="distinct client addresses")
    p.add_argument(
        "--strategies", default=",".join(DEFAULT_STRATEGIES), help="comma-separated names"
    )
    p.add_argument("--seed", type=int, default=1, help="seed for the data and the strategies")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if args.picks is None:
        args.picks = 20_000 if args.scaling else 200_000
    if args.repeat is None:
        args.repeat = 3 if args.scaling else 5
    try:
        args.sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    except ValueError:
        p.error("--sizes must be comma-separated integers")
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes must name at least one backend count, each >= 1")
    if not args.strategies:
        p.error("--strategies must name at least one strategy")
    if min(args.picks, args.warmup, args.repeat, args.backends, args.addresses) < 1:
        p.error("--picks, --warmup, --repeat, --backends and --addresses must be >= 1")
    if args.addresses > 250 * 256 * 256:
        p.error("--addresses is too large")
    return args


def format_scaling(results: list[CaseResult], sizes: list[int]) -> str:
    """One row per strategy: ns/pick at each size, then largest / smallest."""
    by_case = {(r.strategy, r.backends): r for r in results}
    head = ("strategy", *(f"{n} backends" for n in sizes), f"{sizes[-1]}/{sizes[0]}")
    rows: list[tuple[str, ...]] = [head]
    for strategy in dict.fromkeys(r.strategy for r in results):
        cells = [strategy]
        for n in sizes:
            r = by_case[strategy, n]
            cells.append(f"{r.ns_per_pick:,.0f}" if r.status == "ok" else r.status.upper())
        first, last = by_case[strategy, sizes[0]], by_case[strategy, sizes[-1]]
        ok = first.status == last.status == "ok" and first.ns_per_pick > 0
        cells.append(f"{last.ns_per_pick / first.ns_per_pick:.2f}x" if ok else "")
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def run_scaling(args: argparse.Namespace, command: str, machine: dict[str, Any]) -> int:
    """Every strategy (and the loop baseline) at each size; one table, ns per pick."""
    rng = random.Random(args.seed)
    facts = make_facts(args.addresses, args.warmup + args.picks, rng)
    results: list[CaseResult] = []
    for strategy in [BASELINE, *args.strategies]:
        for n in args.sizes:
            backends = make_backends(n, random.Random(args.seed + n))
            print(f"[{strategy} x {n}] {args.repeat} x {args.picks:,} picks ...", file=sys.stderr)
            results.append(run_case(strategy, strategy, backends, facts, args))
    print()
    print(f"command: {command}")
    print(
        f"settings: {args.picks:,} timed picks x {args.repeat} repetitions (median) after"
        f" {args.warmup:,} warm-up picks; the same list object on every pick (weights 1..5,"
        f" random in_flight/sessions, all available); seed {args.seed}"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print()
    print("ns per pick")
    print(format_scaling(results, args.sizes))
    for r in results:
        if r.status != "ok":
            print(f"  {r.case} x {r.backends}: {r.reason}")
    if args.json:
        data = {"command": command, "machine": machine, "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 1 if any(r.status != "ok" for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, *sys.argv])
    machine = machine_info(mcplb=False)
    if args.scaling:
        return run_scaling(args, command, machine)
    rng = random.Random(args.seed)
    many = make_backends(args.backends, rng)
    few = make_backends(3, rng)
    facts = make_facts(args.addresses, args.warmup + args.picks, rng)
    cases: list[tuple[str, str, list[FakeBackend]]] = [(BASELINE, BASELINE, many)]
    cases += [(name, name, many) for name in args.strategies]
    cases.append(("round_robin (3 backends)", "round_robin", few))
    results: list[CaseResult] = []
    for case, strategy, backends in cases:
        print(f"[{case}] {args.repeat} x {args.picks:,} picks ...", file=sys.stderr, flush=True)
        results.append(run_case(case, strategy, backends, facts, args))
    print()
    print(f"command: {command}")
    print(
        f"settings: {args.picks:,} timed picks x {args.repeat} repetitions (median) after"
        f" {args.warmup:,} warm-up picks; {args.backends} backends (weights 1..5, random"
        f" in_flight/sessions, all available); {args.addresses:,} client addresses;"
        f" seed {args.seed}"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print()
    print(format_table(results))
    print(
        "\n'distinct': backends picked during the warm-up (counters are fixed, so a load-aware"
        " strategy may keep picking the least-loaded few)."
    )
    if args.json:
        data = {
            "command": command,
            "settings": {
                "picks": args.picks,
                "warmup": args.warmup,
                "repeat": args.repeat,
                "backends": args.backends,
                "addresses": args.addresses,
                "seed": args.seed,
                "strategies": args.strategies,
            },
            "machine": machine,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    return 1 if any(r.status != "ok" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
