"""Python function calls the relay makes per request: a deterministic figure beside the
CPU gate's (which the load of a shared machine moves).

Usage (from the repository root; the pure build only: compiled functions are not seen)::

    .venv/bin/python bench/relay_calls.py [--requests 20] [--top 0] [--log] [--time 20000]

A plain ``GET /mcp`` and its 200 answer with a two-byte body go through the sans-IO harness
of tests/test_relay_sans_io.py (a ``ClientConnection`` fed bytes, a pooled
``UpstreamConnection`` fed the response; no sockets, no clock waits), ``--requests`` times on
one keep-alive connection after one warm-up request, under ``sys.setprofile``. Printed: the
Python calls (frames entered, "call" events) and the calls of builtins and C methods
("c_call") per request; ``--top N`` lists the N Python functions called most per request.
The harness config is the sans-IO tests' (memory session store, task ids on: the default
affinity kinds; access log off unless ``--log``). ``--time N`` also runs N requests without
the profiler and prints the CPU µs per request (process time; no sockets, so only the
relay's own work: steadier than a socket benchmark, but still moved by the machine's load).
The figures go to stderr (with ``--log``, stdout carries the access log).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import mcplb  # noqa: E402
from tests.test_relay_sans_io import CONFIG, GET, Relay  # noqa: E402

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def count(requests: int, log: bool) -> tuple[Counter[str], int, int]:
    """Python calls by function, and the totals of Python and C calls, over ``requests``."""
    config = CONFIG.replace("log: {access: false}", "log: {access: true}") if log else CONFIG
    relay = Relay(config)
    upstream, _ = relay.backend_connection()
    relay.send(GET)  # warm-up: first-request paths (the connection's first head)
    upstream.data_received(RESPONSE)
    relay.client.take()
    by_function: Counter[str] = Counter()
    totals = Counter[str]()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            by_function[f"{Path(code.co_filename).stem}.{code.co_qualname}"] += 1
            totals["call"] += 1
        elif event == "c_call":
            totals["c_call"] += 1

    answers = 0
    for _ in range(requests):
        sys.setprofile(profile)
        out = relay.send(GET)
        upstream.data_received(RESPONSE)
        sys.setprofile(None)
        out += relay.client.take()
        answers += out.count(b"HTTP/1.1 200 ")
    if answers != requests:
        raise SystemExit(f"{answers} answers of 200 for {requests} requests")
    return by_function, totals["call"], totals["c_call"]


async def cpu_us(requests: int, log: bool) -> float:
    """CPU µs per request over ``requests``, no profiler."""
    config = CONFIG.replace("log: {access: false}", "log: {access: true}") if log else CONFIG
    relay = Relay(config)
    upstream, _ = relay.backend_connection()
    conn, client = relay.conn, relay.client
    for _ in range(requests // 10):  # warm-up
        conn.data_received(GET)
        upstream.data_received(RESPONSE)
    client.written.clear()
    started = time.process_time()
    for _ in range(requests):
        conn.data_received(GET)
        upstream.data_received(RESPONSE)
        client.written.clear()
    return 1e6 * (time.process_time() - started) / requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--top", type=int, default=0)
    parser.add_argument("--log", action="store_true", help="with the access log on")
    parser.add_argument("--time", type=int, default=0, help="requests to time (0: none)")
    args = parser.parse_args(argv)
    by_function, calls, c_calls = asyncio.run(count(args.requests, args.log))
    n = args.requests
    out = sys.stderr  # stdout carries the access log with --log
    print(f"mcplb from {Path(mcplb.__file__).parent.resolve()}", file=out)
    print(f"per request: {calls / n:g} Python calls, {c_calls / n:g} builtin/C calls", file=out)
    for name, times in by_function.most_common(args.top):
        print(f"  {times / n:5g}  {name}", file=out)
    if args.time:
        print(f"CPU per request: {asyncio.run(cpu_us(args.time, args.log)):.2f} µs", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
