"""What checking MCP 2026-07-28 routing headers against the body costs per request: the
relay's head and body steps for a JSON-RPC POST (``mcp_method.count_head`` and
``count_body``: read the body's method for the metrics, and for a 2026-07-28 request judge
``Mcp-Method``/``Mcp-Name`` against it), for the same tools/call sent the 2025 way (a
session, no routing headers: the method is read for the metrics only) and the 2026-07-28
way (the version, ``Mcp-Method`` and ``Mcp-Name`` headers, checked against the body). The
difference of the two is what the validation adds to a request (issue 24's budget: at most
1.5 µs compiled).

Usage (from the repository root)::

    .venv/bin/python bench/validation_bench.py [--rounds 7] [--requests 200000]
    # the compiled build (make compiled), from its tree, so that it imports its modules:
    cd build/compiled && ../../.venv/bin/python bench/validation_bench.py

Prints JSON: the median over the rounds of the nanoseconds per request of each kind, the
difference, and which build the measured module is (pure or compiled).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mcplb.proxy.observability.stats import Stats  # noqa: E402
from mcplb.proxy.relay import mcp_method  # noqa: E402
from mcplb.proxy.relay.request import Request  # noqa: E402

BODY = (
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
    b'"params":{"name":"echo","arguments":{"text":"hello"}}}'
)
COMMON = [
    (b"host", b"127.0.0.1:8080"),
    (b"user-agent", b"node"),
    (b"accept", b"application/json, text/event-stream"),
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
]
BATCH = 1000
HEADERS = {
    "2025": [
        *COMMON,
        (b"mcp-protocol-version", b"2025-06-18"),
        (b"mcp-session-id", b"0123456789abcdef0123456789abcdef"),
    ],
    "2026-07-28": [
        *COMMON,
        (b"mcp-protocol-version", b"2026-07-28"),
        (b"mcp-method", b"tools/call"),
        (b"mcp-name", b"echo"),
    ],
}


def per_request(headers: list[tuple[bytes, bytes]], stats: Stats, n: int) -> float:
    """Nanoseconds per request of the head and body steps, in batches of 1,000 fresh
    requests (made outside the timed loop, and dropped after it, as the relay does)."""
    count_head, keep_body, count_body = (
        mcp_method.count_head,
        mcp_method.keep_body,
        mcp_method.count_body,
    )
    elapsed = 0
    for _ in range(max(1, n // BATCH)):
        requests = []
        for _ in range(BATCH):
            r = Request()
            r.method = b"POST"
            r.target = b"/mcp"
            r.headers = headers
            r.content_length = len(BODY)
            r.body_size = len(BODY)
            requests.append(r)
        start = time.perf_counter_ns()
        for r in requests:
            count_head(stats, r)
            keep_body(r, BODY)
            count_body(stats, r)
        elapsed += time.perf_counter_ns() - start
        for r in requests:
            assert r.mcp_call and r.rpc_id == 7, "the body must have been read"
    return elapsed / (max(1, n // BATCH) * BATCH)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=200_000)
    args = parser.parse_args()
    stats = Stats(["a"])
    verdicts: dict[str, list[float]] = {kind: [] for kind in HEADERS}
    for i in range(args.rounds):
        kinds = list(HEADERS) if i % 2 == 0 else list(reversed(HEADERS))
        for kind in kinds:  # alternated: neither kind always runs first
            verdicts[kind].append(per_request(HEADERS[kind], stats, args.requests))
    medians = {kind: statistics.median(ns) for kind, ns in verdicts.items()}
    module = mcp_method.__file__ or ""
    print(
        json.dumps(
            {
                "ns_per_request_median": {k: round(v, 1) for k, v in medians.items()},
                "added_by_validation_ns": round(medians["2026-07-28"] - medians["2025"], 1),
                "rounds": {k: [round(x, 1) for x in v] for k, v in verdicts.items()},
                "build": "pure" if module.endswith(".py") else "compiled",
                "module": module,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
